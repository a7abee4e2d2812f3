"""run_study with a real Optuna SQLite storage and an in-memory Recorder (our own protocol)."""

from pathlib import Path

import optuna
import pytest

from kdsweep.study.recorder import FinishedRun, RunInfo
from kdsweep.study.runner import run_study
from kdsweep.study.spec import load_spec

from conftest import write_spec


class ListRecorder:
    """Keeps every call, and finds finished runs like the MLflow recorder does (by role + key)."""

    def __init__(self):
        self.runs: dict[str, dict] = {}

    def begin_study(self, name, params):
        self.study = name

    def find(self, role, key):
        for run_id, r in self.runs.items():
            if r["info"].role == role and r["info"].key == key and r["status"] == "FINISHED":
                return FinishedRun(run_id, r["summary"], r["checkpoint"])
        return None

    def start(self, info: RunInfo):
        run_id = info.run_id or f"run{len(self.runs)}"
        self.runs.setdefault(run_id, {"info": info, "epochs": [], "status": "RUNNING", "summary": {},
                                      "checkpoint": None})
        return run_id

    def log_epoch(self, run_id, m):
        self.runs[run_id]["epochs"].append(m)

    def backfill(self, run_id, history):
        logged = {m.epoch for m in self.runs[run_id]["epochs"]}
        self.runs[run_id]["epochs"] += [m for m in history if m.epoch not in logged]

    def finish(self, run_id, summary, checkpoint):
        self.runs[run_id].update(status="FINISHED", summary=summary, checkpoint=checkpoint)

    def fail(self, run_id, reason, *, killed=False):
        self.runs[run_id].update(status="KILLED" if killed else "FAILED", reason=reason)

    def end_study(self, summary):
        self.end = summary

    def roles(self):
        return sorted(r["info"].role for r in self.runs.values())


@pytest.fixture
def spec(tmp_path, subset_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path / "tiny.yaml", subset_root, n_trials=3,
                      search={"kd": {"temperature": {"low": 2.0, "high": 6.0}}, "width": {"choices": [0.25]}})
    return load_spec(path)


def test_teacher_once_baseline_once_one_distilled_run_per_trial(spec):
    rec = ListRecorder()
    outcome = run_study(spec, recorder=rec, workdir=Path("mlruns"))
    assert outcome.complete == 3
    assert rec.roles() == ["baseline", "distilled", "distilled", "distilled", "teacher"]
    for r in rec.runs.values():
        assert r["status"] == "FINISHED" and len(r["epochs"]) == 2
        if r["info"].role == "distilled":
            s = r["summary"]
            assert s.delta_vs_baseline == pytest.approx(s.final_test_acc - base_acc(rec))
            # the trial's decisions compared validation numbers
            assert s.selected_delta == pytest.approx(s.final_val_acc - base_summary(rec).final_val_acc)
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    assert len(study.trials) == 3


def base_summary(rec):
    return next(r["summary"] for r in rec.runs.values() if r["info"].role == "baseline")


def base_acc(rec):
    return base_summary(rec).final_test_acc


def test_rerun_continues_the_study_and_reuses_teacher_and_baseline(spec):
    rec = ListRecorder()
    opened: list[int] = []  # what on_open was told: trials already finished when each run began
    first = run_study(spec, recorder=rec, workdir=Path("mlruns"), on_open=opened.append)
    again = run_study(spec.model_copy(update={"n_trials": 4}), recorder=rec, workdir=Path("mlruns"),
                      on_open=opened.append)
    assert again.complete == 4
    assert opened == [0, first.complete + first.pruned]
    # one more distilled run, and no second teacher or baseline
    assert rec.roles().count("teacher") == 1 and rec.roles().count("baseline") == 1
    assert rec.roles().count("distilled") == 4
    # a finished study trains nothing more
    n = len(rec.runs)
    run_study(spec.model_copy(update={"n_trials": 4}), recorder=rec, workdir=Path("mlruns"))
    assert len(rec.runs) == n



def test_grid_sampler_made_per_trial_visits_every_point_once(tmp_path):
    """The trial loop makes a sampler per trial (``make_sampler(spec, n)``); for the grid that
    once drew the same point twice and left another out (its order came from a seed that changed)."""
    from kdsweep.study import space
    from kdsweep.study.runner import make_sampler

    spec = load_spec(write_spec(tmp_path / "grid.yaml", tmp_path, sampler="grid", n_trials=4,
                                search={"kd": {"alpha": {"choices": [0.5, 0.9]},
                                               "temperature": {"choices": [2.0, 4.0]}}}))
    study = optuna.create_study(direction="maximize")
    for n in range(4):  # as coordination.run_trials drives it
        study.sampler = make_sampler(spec, n)
        study.optimize(lambda trial: space.sample(trial, spec) and 0.0, n_trials=1)
    points = sorted((t.params["kd.alpha"], t.params["kd.temperature"]) for t in study.trials)
    assert points == [(0.5, 2.0), (0.5, 4.0), (0.9, 2.0), (0.9, 4.0)]
