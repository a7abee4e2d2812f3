"""kdsweep.core.models.catalog and `kdsweep models list`: every built-in name with its sizes."""

from __future__ import annotations

from click.testing import CliRunner

from kdsweep.cli import main
from kdsweep.core.models import MODELS, build_model, count_params
from kdsweep.core.models.catalog import catalog
from test_models_zoo import REFERENCE


def test_catalog_counts_on_meta_equal_real_builds():
    entries = {e.name: e for e in catalog((10, 100))}
    assert set(entries) == set(MODELS.names())
    for name in ("resnet20", "wrn_16_1", "shufflenetv2"):  # meta-device counts are those of real weights
        assert entries[name].params == {c: count_params(build_model(name, num_classes=c)) for c in (10, 100)}
    assert entries["wrn_40_2"].family == "wide_resnet" and entries["resnet20"].family == "resnet"


def test_models_list_prints_each_zoo_name_with_both_counts():
    result = CliRunner().invoke(main, ["models", "list"], terminal_width=100)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name, (c100, c10, _) in REFERENCE.items():
        # one table row per model: its name, then the 10- and the 100-class count, in that order
        row = next(line for line in lines if f" {name} " in line)
        assert row.index(f"{c10:,}") < row.index(f"{c100:,}"), row
    assert any(" resnet56 " in line and "861,620" in line for line in lines)  # the older families too


def test_models_group_help_lists_list():
    result = CliRunner().invoke(main, ["models", "--help"])
    assert result.exit_code == 0 and "list" in result.output
