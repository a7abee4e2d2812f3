"""The spec's published: block: validated, stored on the study's MLflow run, set beside the measured rows."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from conftest import write_spec
from kdsweep.cli import main
from kdsweep.errors import SpecError
from kdsweep.study.schema import Published
from kdsweep.study.spec import load_spec
from kdsweep.tracking import render
from kdsweep.tracking.logger import MlflowRecorder
from kdsweep.tracking.published import compare
from kdsweep.tracking.report import Report, Row, TrialPoint

BLOCK = {"source": "Zhao et al. 2022, Table 1", "teacher": 79.42, "student": 72.50, "kd": 73.33, "dkd": 76.32}


def test_spec_with_published_block_loads(tmp_path, subset_root):
    spec = load_spec(write_spec(tmp_path / "s.yaml", subset_root, published=BLOCK))
    assert spec.published.rows() == {"teacher": 79.42, "student": 72.50, "kd": 73.33, "dkd": 76.32}
    assert spec.published.source == "Zhao et al. 2022, Table 1"


@pytest.mark.parametrize(("block", "field"), [
    ({**BLOCK, "kdd": 70.0}, "published.kdd"),  # a typo of a method name
    ({**BLOCK, "kd": 173.3}, "published.kd"),  # percent, not above 100
    ({**BLOCK, "kd": 0.7333}, None),  # a fraction is a valid (if odd) percentage: not refused
    ({k: v for k, v in BLOCK.items() if k != "source"}, "published.source"),
    ({"source": "a paper"}, "published"),  # no numbers
])
def test_bad_published_block_is_one_line_naming_the_field(tmp_path, subset_root, block, field):
    path = write_spec(tmp_path / "s.yaml", subset_root, published=block)
    if field is None:
        load_spec(path)
        return
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (problem,) = info.value.problems
    assert f": {field}=" in problem, problem


def test_published_block_is_tagged_on_the_study_run_and_updated_on_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {"published": Published(**BLOCK).model_dump(mode="json")}  # as the runner passes it: None rows too
    rec = MlflowRecorder(uri, artifacts=str(tmp_path / "a"), workdir=tmp_path / "w")
    rec.begin_study("s1", {"spec": spec})
    tag = json.loads(MlflowClient(uri).get_run(rec.parent_id).data.tags["published"])
    assert tag == BLOCK  # the rows the spec gave, no nulls
    again = MlflowRecorder(uri, artifacts=str(tmp_path / "a"), workdir=tmp_path / "w")
    again.begin_study("s1", {"spec": {"published": {**BLOCK, "kd": 73.0}}})
    assert json.loads(MlflowClient(uri).get_run(rec.parent_id).data.tags["published"])["kd"] == 73.0


def row(label: str, accs: list[float], method: str = "") -> Row:
    return Row(label=label, arch="a", params=1, train_acc=accs, test_acc=accs, method=method)


def report(published: dict) -> Report:
    rows = [row("Teacher", [0.79]),
            row("Student (baseline)", [0.720, 0.725, 0.730]),
            row("Distilled, trial 0 (kd), confirmed", [0.69, 0.70, 0.71], method="kd")]
    trials = [TrialPoint(trial="0", params={}, test_acc=[0.70], delta=[0.0], num_params=1, run_ids=["r0"], method="kd"),
              TrialPoint(trial="1", params={}, test_acc=[0.74, 0.76], delta=[0.0, 0.0], num_params=1,
                         run_ids=["r1", "r2"], method="dkd")]
    return Report(study="s", rows=rows, ema=[], trials=trials, epoch_note="", best_run_id="r0", published=published)


def test_each_published_number_meets_its_row_with_interval_and_verdict():
    got = {r.name: r for r in compare(report({**BLOCK, "lskd": 70.0}))}
    assert got["teacher"].verdict == "one run: no interval" and got["teacher"].difference == pytest.approx(79 - 79.42)
    # baseline 72.0/72.5/73.0: mean 72.5, t(2) interval 72.5 +- 4.303 * 0.5 / sqrt(3)
    mean, low, high = got["student"].interval
    assert (mean, high - mean) == (pytest.approx(72.5), pytest.approx(4.302653 * 0.5 / math.sqrt(3), rel=1e-5))
    assert got["student"].verdict == "inside"
    assert got["kd"].source_row == "Distilled, trial 0 (kd), confirmed"  # the report's row, not the search trial
    assert got["kd"].verdict == "outside"  # 70 +- 2.48 does not reach 73.33
    assert got["dkd"].source_row.startswith("search trial 1 (dkd)")  # no row of its own: its best trial
    assert got["lskd"].verdict == "not measured" and got["lskd"].measured == []


def test_markdown_and_csv_show_the_published_section_only_with_a_block():
    md = render.render_markdown(report(BLOCK))
    section = md.split("## Published vs measured (published: Zhao et al. 2022, Table 1)", 1)[1].split("##", 1)[0]
    assert "| student | Student (baseline) | 72.50 | 72.50 | [71.26, 73.74] | +0.00 | inside |" in section
    assert "Published vs measured" in render.render_csv(report(BLOCK))
    assert "Published vs measured" not in render.render_markdown(report({}))


@pytest.mark.parametrize("command", ["run", "validate"])
def test_cli_refuses_a_bad_published_block_in_one_line_creating_nothing(tmp_path, subset_root, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "spec.yaml", subset_root, published={**BLOCK, "dkd": 176.32})
    result = CliRunner().invoke(main, ["study", command, str(spec)])
    assert result.exit_code == 2, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith(f"Error: {spec}: published.dkd=176.32"), line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["spec.yaml"]  # no mlruns/, no store, no run
