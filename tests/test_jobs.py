"""jobs > 1: trials in threads, trainings packed, and the study ends exactly as one trial at a time would."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest

from kdsweep.study.runner import run_study
from kdsweep.study.spec import load_spec

from conftest import run_cli, sigint_default, signal_when, write_spec
from test_runner import ListRecorder


class LockedRecorder(ListRecorder):
    """ListRecorder for several threads: run ids are handed out under a lock."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()

    def start(self, info):
        with self.lock:
            return super().start(info)


def tiny(tmp_path, subset_root, name, **kw):
    path = write_spec(tmp_path / f"{name}.yaml", subset_root, name=name, seeds=[0, 1], n_trials=5,
                      storage=f"sqlite:///{tmp_path}/{name}-optuna.db", **kw)
    return load_spec(path)


def trials(spec):
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    return {t.number: (t.state, t.params, t.value, t.user_attrs["val_acc_std"]) for t in study.trials}


def test_packed_study_equals_the_one_at_a_time_study(tmp_path, subset_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    alone = tiny(tmp_path, subset_root, "alone")
    packed = tiny(tmp_path, subset_root, "packed", jobs=3)
    out_alone = run_study(alone, recorder=LockedRecorder(), workdir=Path("mlruns-alone"))
    rec = LockedRecorder()
    out_packed = run_study(packed, recorder=rec, workdir=Path("mlruns-packed"))
    assert out_alone.packed == [] and out_packed.complete == 5
    # every trial drew the same values and trained bit for bit the same, just 3 at a time
    assert trials(packed) == trials(alone)
    assert max(out_packed.packed) == 3  # trainings did share loops
    # 2 baselines (one per seed) + 5 trials x 2 seeds
    assert sum(out_packed.packed) == 2 + 10
    assert rec.roles() == ["baseline"] * 2 + ["distilled"] * 10 + ["teacher"]
    assert all(r["status"] == "FINISHED" for r in rec.runs.values())


def test_jobs_with_online_teachers_is_accepted(tmp_path, subset_root):
    # each student steps its own co-trained teacher inside its step, so online pairs pack too
    # (their bit-equality with pairs trained alone: tests/test_online.py)
    path = write_spec(tmp_path / "s.yaml", subset_root, jobs=2,
                      teacher={"arch": "resnet8", "width": 0.5, "mode": "online"})
    assert load_spec(path).jobs == 2


# -- a packed study killed, then resumed (real processes) ---------------------------------------

KILL_SPEC = dict(name="packed", n_trials=3, jobs=2,
                 teacher={"arch": "resnet8", "width": 0.5, "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.05}},
                 student={"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.05}})


def two_running_past_epoch_one(folder: Path) -> bool:
    try:
        found = optuna.load_study(study_name="packed", storage=f"sqlite:///{folder}/mlruns/optuna.db").trials
    except Exception:  # not created yet, or the paused process holds the write lock
        return False
    running = [t for t in found if t.state == optuna.trial.TrialState.RUNNING]
    return len(running) == 2 and all(1 in t.intermediate_values for t in running)


def values_by_params(folder: Path) -> dict:
    study = optuna.load_study(study_name="packed", storage=f"sqlite:///{folder}/mlruns/optuna.db")
    return {tuple(sorted(t.params.items())): t.value for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE}


@pytest.fixture(scope="module")
def plain(tmp_path_factory, subset_root) -> Path:
    """The same study, one trial at a time and never interrupted."""
    folder = tmp_path_factory.mktemp("plain")
    write_spec(folder / "spec.yaml", subset_root, **{**KILL_SPEC, "jobs": 1})
    assert run_cli("study", "run", "spec.yaml", cwd=folder).returncode == 0
    return folder


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_packed_study_resumes_and_ends_as_an_uninterrupted_one(tmp_path, subset_root, plain, sig):
    folder = tmp_path / "killed"
    folder.mkdir()
    write_spec(folder / "spec.yaml", subset_root, **KILL_SPEC)
    env = {k: v for k, v in os.environ.items() if k != "KDSWEEP_DATA_ROOT"}
    log = folder / "first-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kdsweep", "study", "run", "spec.yaml"], cwd=folder,
                                env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=sigint_default)
    try:
        signal_when(proc, lambda: two_running_past_epoch_one(folder), sig, 600, log)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    study = optuna.load_study(study_name="packed", storage=f"sqlite:///{folder}/mlruns/optuna.db")
    if sig == signal.SIGINT:  # both packed trials were stopped and marked, as a single trial is
        assert code == 130, log.read_text()[-2000:]
        failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
        assert len(failed) == 2 and all(t.user_attrs.get("interrupted") for t in failed)
        assert "Resume with: kdsweep study run spec.yaml" in log.read_text()
    else:  # a power cut: both left RUNNING
        assert sum(t.state == optuna.trial.TrialState.RUNNING for t in study.trials) == 2

    again = run_cli("study", "run", "spec.yaml", cwd=folder)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    # the two killed trials were retried with their values and continued from their epoch-1
    # checkpoints: they end bit for bit as in the uninterrupted study. (The third trial is new:
    # the sampler is reseeded from the trial count, which the failed trials raised.)
    resumed, uninterrupted = values_by_params(folder), values_by_params(plain)
    assert len(resumed) == 3
    killed = [tuple(sorted(t.params.items())) for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert len(killed) == 2
    for params in killed:
        assert resumed[params] == uninterrupted[params]


def test_packed_study_on_postgresql(tmp_path, subset_root, monkeypatch, postgres_db):
    # PostgreSQL: the threads' claim and baseline locks are advisory locks on their own connections
    monkeypatch.chdir(tmp_path)
    alone = tiny(tmp_path, subset_root, "alone")
    packed = tiny(tmp_path, subset_root, "packed", jobs=3).model_copy(update={"storage": postgres_db()})
    run_study(alone, recorder=LockedRecorder(), workdir=Path("mlruns-alone"))
    out = run_study(packed, recorder=LockedRecorder(), workdir=Path("mlruns-packed"))
    assert out.complete == 5 and max(out.packed) == 3
    assert trials(packed) == trials(alone)


def test_jobs_flag_wins_over_the_spec_and_a_bad_value_is_named(tmp_path, subset_root):
    spec = write_spec(tmp_path / "s.yaml", subset_root, jobs=2)
    ok = run_cli("study", "validate", str(spec), "--jobs", "4", cwd=tmp_path)
    assert ok.returncode == 0 and "jobs: 4" in ok.stdout, ok.stderr
    bad = run_cli("study", "validate", str(spec), "--jobs", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "jobs=0 (from --jobs)" in bad.stderr, bad.stderr
    assert not (tmp_path / "mlruns").exists()
