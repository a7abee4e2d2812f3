"""Paired gains over seeds with Student-t intervals, checked against scipy's paired t-test."""

import math

import pytest
from scipy import stats

from kdsweep.tracking.stats import paired_gain


def test_interval_matches_the_paired_t_test():
    values, baselines = [0.56, 0.58, 0.57, 0.60, 0.55], [0.53, 0.54, 0.55, 0.55, 0.52]
    g = paired_gain(values, baselines)
    diffs = [v - b for v, b in zip(values, baselines)]
    res = stats.ttest_rel(values, baselines)
    ci = res.confidence_interval(0.95)
    assert g.mean == pytest.approx(sum(diffs) / 5)
    assert (g.low, g.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert g.distinguishable and g.verdict() == "above the baseline"


def test_an_interval_containing_zero_is_called_not_distinguishable():
    g = paired_gain([0.50, 0.53, 0.49], [0.51, 0.50, 0.50])
    assert g.low < 0 < g.high and not g.distinguishable
    assert g.verdict() == "not distinguishable from the baseline"


def test_one_seed_has_no_interval():
    g = paired_gain([0.6], [0.5])
    assert g.mean == pytest.approx(0.1) and math.isnan(g.low) and g.verdict() == "one seed: no interval"


def test_unpaired_input_is_refused():
    with pytest.raises(ValueError, match="one baseline per value"):
        paired_gain([0.5, 0.6], [0.5])
