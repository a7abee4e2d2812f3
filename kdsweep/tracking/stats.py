"""Paired comparisons over seeds: a distilled run against its matched baseline, seed by seed.

The gain is the mean of the per-seed differences; its 95% confidence interval uses Student's t
with n - 1 degrees of freedom (``scipy.stats.t``), since a handful of seeds is all a study has.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class PairedGain:
    mean: float
    std: float  # of the per-seed differences
    n: int
    low: float  # 95% CI; nan with one seed
    high: float

    @property
    def distinguishable(self) -> bool:
        """Whether the 95% interval excludes 0 (a gain, or a loss, the seeds agree on)."""
        return self.n > 1 and not (self.low <= 0.0 <= self.high)

    def verdict(self) -> str:
        if self.n < 2:
            return "one seed: no interval"
        if not self.distinguishable:
            return "not distinguishable from the baseline"
        return "above the baseline" if self.mean > 0 else "below the baseline"


def paired_gain(values: list[float], baselines: list[float], confidence: float = 0.95) -> PairedGain:
    """Per-seed ``values[i] - baselines[i]``: mean, std and the t-interval of the mean."""
    if len(values) != len(baselines) or not values:
        raise ValueError(f"paired_gain needs one baseline per value, got {len(values)} and {len(baselines)}")
    diffs = [v - b for v, b in zip(values, baselines)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return PairedGain(mean, 0.0, n, math.nan, math.nan)
    from scipy import stats

    sd = statistics.stdev(diffs)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return PairedGain(mean, sd, n, mean - half, mean + half)


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and the t-interval of that mean; (mean, nan, nan) for one value."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan
    from scipy import stats

    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half
