"""schema: search.arch (the student's architecture as a search dimension) and Pareto objectives."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from conftest import write_spec
from kdsweep.cli import main
from kdsweep.study.spec import StudySpec

BASE = {"name": "s", "teacher": {"arch": "resnet20"}, "student": {"arch": "resnet8"}, "pruner": "none"}


def spec(**fields) -> StudySpec:
    return StudySpec.model_validate({**BASE, **fields})


def test_search_arch_takes_built_in_names_and_source_forms():
    s = spec(search={"arch": {"choices": ["resnet8", "resnet14", "torchvision:mobilenet_v3_small"]}})
    assert s.search.arch.choices == ["resnet8", "resnet14", "torchvision:mobilenet_v3_small"]
    assert dict(s.search.items())["arch"] is s.search.arch


@pytest.mark.parametrize("arch,message", [
    ({"choices": ["resnet8", "resnet7"]}, "'resnet7' unknown architecture"),
    ({"low": 1, "high": 2}, "an arch is picked from choices, not a range"),
    ({"choices": [8]}, "8.0 is not an arch string"),
])
def test_a_bad_search_arch_names_the_field_and_value(arch, message):
    with pytest.raises(ValidationError) as info:
        spec(search={"arch": arch})
    (error,) = info.value.errors()
    assert error["loc"][:2] == ("search", "arch") and message in error["msg"]


def test_objective_pair_with_latency_makes_a_pareto_study_that_round_trips():
    s = spec(objective=["val_acc", "latency_ms"], search={"arch": {"choices": ["resnet8", "resnet14"]}})
    assert (s.objective, s.multi_objective, s.pareto_metric) == ("val_acc", True, "latency_ms")
    # what `study validate` prints (and the MLflow parent run keeps) validates back to the same spec
    assert StudySpec.model_validate(s.model_dump(mode="json")) == s
    params = spec(objective=["delta_vs_baseline", "params"], search={"width": {"choices": [0.25, 0.5]}})
    assert (params.objective, params.multi_objective, params.pareto_metric) == ("delta_vs_baseline", True, "params")


@pytest.mark.parametrize("objective", [["val_acc", "flops"], ["latency_ms", "val_acc"], ["val_acc"]])
def test_a_bad_objective_pair_says_which_form_it_takes(objective):
    with pytest.raises(ValidationError) as info:
        spec(objective=objective, search={"arch": {"choices": ["resnet8", "resnet14"]}})
    (error,) = info.value.errors()
    assert error["loc"] == ("objective",) and "[ACCURACY, COST]" in error["msg"]


def test_a_pareto_study_needs_the_student_to_vary():
    with pytest.raises(ValidationError, match="search width or arch over two or more values"):
        spec(objective=["val_acc", "latency_ms"], search={"arch": {"choices": ["resnet8"]}})
    assert spec(objective=["val_acc", "latency_ms"], search={"arch": {"choices": ["resnet8", "resnet14"]}})


def test_an_unknown_searched_arch_exits_2_in_one_line_and_creates_nothing(tmp_path, monkeypatch, subset_root):
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path / "spec.yaml", subset_root, search={"arch": {"choices": ["resnet8", "resnet7"]}})
    result = CliRunner().invoke(main, ["study", "run", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = [l for l in result.stderr.splitlines() if l.strip()]
    assert line.startswith(f"Error: {path}: search.arch=") and "'resnet7' unknown architecture" in line
    assert [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]
