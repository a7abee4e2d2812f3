"""``processes: N`` in a study: each run trained by N data-parallel processes (core/distributed.py)."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from conftest import write_spec
from kdsweep.cli import main


def test_processes_with_jobs_is_one_line_and_creates_nothing(tmp_path, subset_root):
    spec = write_spec(tmp_path / "s.yaml", subset_root, processes=2, jobs=2)
    result = CliRunner().invoke(main, ["study", "run", str(spec)], catch_exceptions=False)
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "processes=2" in lines[0] and "jobs=2" in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_processes_with_an_online_teacher_is_refused(tmp_path, subset_root):
    raw = yaml.safe_load(write_spec(tmp_path / "s.yaml", subset_root).read_text())
    raw["teacher"]["mode"] = "online"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["study", "run", str(tmp_path / "s.yaml"), "--processes", "2"])
    assert result.exit_code == 2 and "teacher.mode: pretrained" in result.output, result.output


def test_a_study_with_processes_trains_its_runs_on_that_many_processes(tmp_path, subset_root):
    # the end-to-end run of train_on is in tests/test_distributed.py; here: the study picks it
    from kdsweep.core.distributed import train_on
    from kdsweep.core.trainer import train
    from kdsweep.study.runner import run_trainer
    from kdsweep.study.spec import load_spec

    two = run_trainer(load_spec(write_spec(tmp_path / "a.yaml", subset_root), {"processes": 2}))
    assert two.func is train_on and two.args == (2,)
    assert run_trainer(load_spec(write_spec(tmp_path / "b.yaml", subset_root))) is train
