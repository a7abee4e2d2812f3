"""A study killed with SIGKILL mid-trial, then rerun with the same command (real processes).

The rerun comes at once, well inside Optuna's heartbeat grace period, so it must recognise the
dead process itself. Also: the same spec and seed on the CPU give bit-identical metrics, and a
resumed trial gives exactly what an uninterrupted one gives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import run_cli, sigint_default, signal_when, write_spec

STUDENT = {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.05}}
TEACHER = {"arch": "resnet8", "width": 0.5, "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.05}}
DATA = {"dataset": "cifar10", "limit_per_file": 20}  # 100 training, 20 test images: about a second an epoch
TIMING = {"epoch_seconds", "images_per_second"}  # wall-clock metrics: never reproducible


def make_spec(folder: Path, subset_root: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_spec(folder / "spec.yaml", subset_root, name="resume", n_trials=2, teacher=TEACHER,
                      student=STUDENT, data={**DATA, "root": str(subset_root)})


def load(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="resume", storage=f"sqlite:///{folder}/mlruns/optuna.db")


def trials_or_none(folder: Path):
    if not (folder / "mlruns" / "optuna.db").exists():
        return None
    try:
        return load(folder).get_trials(deepcopy=False)
    except Exception:  # not created yet, or the paused process holds the database's write lock
        return None


def mid_second_trial(trials) -> bool:
    """Trial 0 finished, trial 1 past its first epoch (its checkpoint is written before the report)."""
    if not trials:
        return False
    states = [t.state for t in trials]
    return (states.count(TrialState.COMPLETE) == 1 and len(trials) == 2 and trials[1].state == TrialState.RUNNING
            and 1 in trials[1].intermediate_values)


def runs(folder: Path, study: str | None = "resume") -> dict[str, list]:
    """MLflow runs by role, of one study's experiment (``None``: of every experiment)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments() if study is None or e.name == study]
    out: dict[str, list] = {}
    for run in client.search_runs(ids, max_results=1000):
        out.setdefault(run.data.tags["role"], []).append(run)
    return out


def history(folder: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, subset_root) -> Path:
    """Run the study, SIGKILL it in trial 1's second epoch, rerun the same command at once."""
    folder = tmp_path_factory.mktemp("killed")
    make_spec(folder, subset_root)
    env = {k: v for k, v in os.environ.items() if k != "KDSWEEP_DATA_ROOT"}
    log = folder / "first-run.log"
    with open(log, "w") as out:  # a file, not a pipe: nobody reads a pipe while we poll
        proc = subprocess.Popen([sys.executable, "-m", "kdsweep", "study", "run", "spec.yaml"], cwd=folder,
                                env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=sigint_default)
    try:  # no cleanup, no tell(), no MLflow call: a power cut (900 s: shared CI machines are slow)
        signal_when(proc, lambda: mid_second_trial(trials_or_none(folder)), signal.SIGKILL, 900, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    killed = load(folder).trials
    assert killed[1].state == TrialState.RUNNING  # what the crash left behind
    (folder / "killed_trial_run_id").write_text(killed[1].user_attrs["mlflow_run_id_seed0"])

    again = run_cli("study", "run", "spec.yaml", cwd=folder, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    return folder


def test_rerun_fails_the_dead_trial_and_retries_it(resumed):
    trials = load(resumed).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    dead, retry = trials[1], trials[2]
    assert "died during trial 1" in dead.user_attrs["fail_reason"]
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == dead.params
    # exactly n_trials finished trials, none extra
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_finished_work_is_kept_not_redone(resumed):
    by_role = runs(resumed)
    assert len(by_role["teacher"]) == 1 and len(by_role["baseline"]) == 1  # trained once, before the kill
    first = load(resumed).trials[0]
    (run,) = [r for r in by_role["distilled"] if r.info.run_id == first.user_attrs["mlflow_run_id_seed0"]]
    assert [s for s, _ in history(resumed, run.info.run_id, "train_loss")] == [1, 2, 3]  # not trained again


def test_retry_reopens_the_killed_mlflow_run_and_continues_from_its_checkpoint(resumed):
    run_id = (resumed / "killed_trial_run_id").read_text()
    trials = load(resumed).trials
    assert trials[2].user_attrs["mlflow_run_id_seed0"] == run_id  # the retry logged into the same run
    distilled = runs(resumed)["distilled"]
    assert len(distilled) == 2  # one run per finished trial: no orphan left RUNNING
    (run,) = [r for r in distilled if r.info.run_id == run_id]
    assert run.info.status == "FINISHED"
    assert "died during trial 1" in run.data.tags["failure_reason"]  # it was closed as FAILED first
    assert run.data.tags["trial"] == "2"
    # each epoch logged once: epoch 1 was not trained again, so the retry began at epoch 2
    assert [s for s, _ in history(resumed, run_id, "train_loss")] == [1, 2, 3]
    assert run.data.metrics["final_epoch"] == 3


def test_same_spec_and_seed_give_identical_metrics_and_resume_changes_nothing(resumed, tmp_path, subset_root):
    """CPU: an uninterrupted study in a fresh folder gives every run bit-identical metrics."""
    fresh = tmp_path / "fresh"
    make_spec(fresh, subset_root)
    done = run_cli("study", "run", "spec.yaml", cwd=fresh, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    def metrics(folder: Path) -> dict[str, dict[str, float]]:
        return {r.data.tags["config_hash"]: {k: v for k, v in r.data.metrics.items() if k not in TIMING}
                for rs in runs(folder).values() for r in rs if r.data.tags["role"] != "study"}

    a, b = metrics(resumed), metrics(fresh)
    assert sorted(a) == sorted(b) and len(a) == 4  # teacher, baseline, two distilled configs
    for key in a:
        assert a[key] == b[key], key  # exact equality, not approx


def test_ctrl_c_marks_the_trial_says_how_to_resume_and_the_rerun_continues_it(resumed, subset_root):
    """SIGINT mid-trial, in the same folder: teacher and baseline reused; another temperature range,
    so the trial's config (and checkpoint) differs from the finished trials'."""
    spec = write_spec(resumed / "interrupt.yaml", subset_root, name="interrupt", n_trials=1,
                      teacher=TEACHER, student=STUDENT, data={**DATA, "root": str(subset_root)},
                      search={"kd": {"temperature": {"low": 7.0, "high": 8.0}}})
    storage = f"sqlite:///{resumed}/mlruns/optuna.db"

    def running_past_epoch_1() -> bool:
        try:
            trials = optuna.load_study(study_name="interrupt", storage=storage).get_trials(deepcopy=False)
        except Exception:  # not created yet, or the paused process holds the database's write lock
            return False
        return bool(trials) and trials[-1].state == TrialState.RUNNING and 1 in trials[-1].intermediate_values

    log = resumed / "interrupt.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kdsweep", "study", "run", spec.name], cwd=resumed,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=sigint_default)
    signal_when(proc, running_past_epoch_1, signal.SIGINT, 900, log)
    assert proc.wait(timeout=120) == 130
    assert "Resume with: kdsweep study run interrupt.yaml" in log.read_text()
    assert "Traceback" not in log.read_text()

    (trial,) = optuna.load_study(study_name="interrupt", storage=storage).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"] is True
    assert "interrupted" in trial.user_attrs["fail_reason"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{resumed}/mlruns/mlflow.db")
    run_id = trial.user_attrs["mlflow_run_id_seed0"]
    assert client.get_run(run_id).info.status == "KILLED"  # not left RUNNING
    before = runs(resumed, None)

    again = run_cli("study", "run", spec.name, cwd=resumed, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    first, retry = optuna.load_study(study_name="interrupt", storage=storage).trials
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.params == first.params and retry.user_attrs["mlflow_run_id_seed0"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(resumed, run_id, "train_loss")] == [1, 2, 3]  # went on from epoch 1
    after = runs(resumed, None)
    assert len(after["teacher"]) == len(before["teacher"]) == 1  # one teacher for both studies
    assert len(after["baseline"]) == 1  # and one baseline


def test_sigterm_stops_like_ctrl_c_and_closes_the_run_in_progress(tmp_path, subset_root):
    """`kill PID` (what batch schedulers send first): here while the teacher trains."""
    teacher = {**TEACHER, "recipe": {**TEACHER["recipe"], "epochs": 20}}
    write_spec(tmp_path / "spec.yaml", subset_root, name="term", teacher=teacher, student=STUDENT,
               data={**DATA, "root": str(subset_root)})
    from mlflow.tracking import MlflowClient

    def teacher_runs() -> list:
        if not (tmp_path / "mlruns" / "progress").exists():  # the first epoch's checkpoint: training is on
            return []
        client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
        exp = client.get_experiment_by_name("term")
        return client.search_runs([exp.experiment_id], "tags.role = 'teacher'") if exp else []

    log = tmp_path / "term.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kdsweep", "study", "run", "spec.yaml", "--n-trials", "1"],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, preexec_fn=sigint_default)
    def teacher_training() -> bool:
        try:
            return bool(teacher_runs())
        except Exception:  # the paused process holds the database's write lock: look again
            return False

    signal_when(proc, teacher_training, signal.SIGTERM, 900, log)
    assert proc.wait(timeout=120) == 130
    assert "Resume with: kdsweep study run spec.yaml --n-trials 1" in log.read_text()
    (run,) = teacher_runs()
    assert run.info.status == "KILLED"  # closed, not left RUNNING; the rerun reopens and continues it


def test_stream_loader_run_killed_mid_training_resumes_to_the_uninterrupted_metrics(tmp_path):
    """The stream loader under a real SIGKILL (its worker process dies with it): `teacher train`
    killed after its first epoch's checkpoint, rerun, logs the losses of a run never killed."""
    from photo_layouts import write_jpeg_folder

    from kdsweep.core.trainer import train
    from kdsweep.study import space
    from kdsweep.study.runner import load_data
    from kdsweep.study.spec import load_spec

    root = write_jpeg_folder(tmp_path / "photos", classes=3, per_class=8, val_per_class=2, size=24)
    teacher = {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 3, "batch_size": 8, "lr": 0.05}}
    data = {"dataset": "imagefolder", "root": str(root), "loader": "stream", "augment": "imagenet",
            "image_size": 16, "workers": 1, "val_split": 3}
    killed = tmp_path / "killed"
    killed.mkdir()
    spec = write_spec(killed / "spec.yaml", root, name="streamed", teacher=teacher, data=data,
                      student={**STUDENT, "recipe": {**STUDENT["recipe"], "batch_size": 8}})
    log = killed / "first-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kdsweep", "teacher", "train", "spec.yaml"], cwd=killed,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=sigint_default)
    try:  # after epoch 1's checkpoint, before the run ends
        signal_when(proc, lambda: any((killed / "mlruns" / "progress").glob("*.pt")), signal.SIGKILL, 900, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    # at once: the worker may outlive its trainer for a moment, and must not hold the store's lock
    done = run_cli("teacher", "train", "spec.yaml", cwd=killed, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    (run,) = runs(killed, "streamed")["teacher"]
    losses = history(killed, run.info.run_id, "train_loss")
    # each epoch logged once: epoch 1's log, lost if the kill came between its checkpoint and its
    # log, is backfilled from the checkpoint's history
    assert [step for step, _ in losses] == [1, 2, 3]
    # the same spec trained here, never killed: the same losses, exactly (the batches were the same)
    parsed = load_spec(spec)
    uninterrupted = train(space.teacher_config(parsed, "cpu"), load_data(parsed))
    assert [loss for _, loss in losses] == [m.train_loss for m in uninterrupted.history]
