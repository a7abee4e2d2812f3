"""Stores that fail mid-study and come back: the MLflow server stopped and started again, the
PostgreSQL server restarted, the disk full while a checkpoint is written. Real processes, real
servers (a PostgreSQL cluster of the test's own, never the shared one), a real tmpfs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import optuna
import pytest
from optuna.trial import TrialState

from conftest import free_port, require_or_skip, run_cli, write_spec

STUDENT = {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.05}}
TEACHER = {"arch": "resnet8", "width": 0.5, "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.05}}


def while_paused(proc: subprocess.Popen, ready: Callable[[], bool], action: Callable[[], None], timeout: float,
                 log: Path) -> None:
    """Run ``action()`` at a moment when ``ready()`` holds, with ``proc`` paused meanwhile (SIGSTOP),
    so that it cannot move on between the look and the action (see conftest.signal_when)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() >= deadline:
            why = "the process ended" if proc.poll() is not None else f"{timeout:.0f} s passed"
            raise AssertionError(f"{why} before the moment came:\n{log.read_text()}")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            hit = ready()
            if hit:
                action()
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        if hit:
            return
        time.sleep(0.05)


def start(args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k != "KDSWEEP_DATA_ROOT"}
    full.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    with open(log, "w") as out:  # a file, not a pipe: nobody reads a pipe while we poll
        return subprocess.Popen([sys.executable, "-m", "kdsweep", *args], cwd=cwd, env=full, stdout=out,
                                stderr=subprocess.STDOUT)


def trials_of(storage, name: str) -> list | None:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except Exception:  # not created yet, the paused process holds SQLite's lock, or PostgreSQL restarts
        return None


def training_past_epoch_1(storage, name: str) -> bool:
    trials = trials_of(storage, name)
    return bool(trials) and any(t.state == TrialState.RUNNING and 1 in t.intermediate_values for t in trials)


def distilled_runs(tracking_uri: str, study: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000) if r.data.tags["role"] == "distilled"]


def logged_epochs(tracking_uri: str, run_id: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, "train_loss"))


# -- the MLflow server stopped mid-trial, started again -----------------------------------------

def test_mlflow_server_stopped_mid_trial_is_waited_for_and_the_study_completes(tmp_path, subset_root):
    from kdsweep.tracking.server import ServerOptions, launch

    opts = ServerOptions(port=free_port(), backend_store_uri=f"sqlite:///{tmp_path}/server/mlflow.db",
                         artifacts_destination=str(tmp_path / "server" / "artifacts"), workers=1,
                         log_file=tmp_path / "server" / "server.log")
    server = launch(opts, wait=300)
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="outage", n_trials=1, teacher=TEACHER,
                      student=STUDENT, data={"dataset": "cifar10", "root": str(subset_root), "limit_per_file": 20})
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    log = tmp_path / "study.log"
    proc = start(["study", "run", spec.name, "--tracking-uri", server.url], tmp_path, log)
    try:
        # the server goes down between the trial's first and second epoch logs
        while_paused(proc, lambda: training_past_epoch_1(storage, "outage"), server.stop, 600, log)
        deadline = time.monotonic() + 120
        while "is not answering; waiting up to 120 s" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        server = launch(opts, wait=300)  # same port, same store: a restart
        assert proc.wait(timeout=300) == 0, log.read_text()
        text = log.read_text()
        assert f"MLflow server {server.url} is back; going on" in text and "Traceback" not in text
        (trial,) = optuna.load_study(study_name="outage", storage=storage).trials
        assert trial.state == TrialState.COMPLETE  # waited, not failed
        (run,) = distilled_runs(server.url, "outage")
        assert run.info.status == "FINISHED"
        # each epoch once: the call that met the stopped server ran again, nothing doubled
        assert logged_epochs(server.url, run.info.run_id) == [1, 2, 3]
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


def test_mlflow_server_gone_past_the_wait_stops_with_the_resume_line_and_the_rerun_logs_each_epoch_once(
        tmp_path, subset_root):
    from kdsweep.tracking.server import ServerOptions, launch

    opts = ServerOptions(port=free_port(), backend_store_uri=f"sqlite:///{tmp_path}/server/mlflow.db",
                         artifacts_destination=str(tmp_path / "server" / "artifacts"), workers=1,
                         log_file=tmp_path / "server" / "server.log")
    server = launch(opts, wait=300)
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="gone", n_trials=1, teacher=TEACHER,
                      student=STUDENT, data={"dataset": "cifar10", "root": str(subset_root), "limit_per_file": 20})
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    log = tmp_path / "study.log"
    proc = start(["study", "run", spec.name, "--tracking-uri", server.url], tmp_path, log,
                 {"KDSWEEP_TRACKING_WAIT": "2"})
    try:  # down after epoch 1 was checkpointed, before epoch 2's log: epoch 2 is checkpointed, never logged
        while_paused(proc, lambda: training_past_epoch_1(storage, "gone"), server.stop, 600, log)
        assert proc.wait(timeout=300) == 2, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    (error,) = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert "(waited 2 s for the server)" in error and "rerun the same command to resume" in error
    resume = next(line for line in text.splitlines() if line.startswith("Resume with: "))
    assert resume == f"Resume with: kdsweep study run spec.yaml --tracking-uri {server.url}"
    server = launch(opts, wait=300)
    try:
        again = run_cli(*resume.split()[3:], cwd=tmp_path, timeout=600)
        assert again.returncode == 0, again.stdout + again.stderr
        first, retry = optuna.load_study(study_name="gone", storage=storage).trials
        assert (first.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
        (run,) = distilled_runs(server.url, "gone")
        assert run.info.run_id == retry.user_attrs["mlflow_run_id_seed0"] and run.info.status == "FINISHED"
        # the epoch whose log met the stopped server was logged by the rerun (backfill), none twice
        assert logged_epochs(server.url, run.info.run_id) == [1, 2, 3]
    finally:
        server.stop()


# -- PostgreSQL restarted mid-study -----------------------------------------------------------

CLUSTER = "kdsw_restart"


def pg(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = list(args) if user is None else ["su", user, "-c", " ".join(args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def own_postgres():
    """A PostgreSQL 15 cluster of this test's own on a free port (restarting the shared one would
    break other tests): its URL without a database name; dropped afterwards."""
    if shutil.which("pg_createcluster") is None or os.geteuid() != 0:
        require_or_skip("needs root and Debian's postgresql (pg_createcluster) to make a cluster to restart")
    pg("pg_dropcluster", "--stop", "15", CLUSTER)  # left over from an aborted run
    port = free_port()
    made = pg("pg_createcluster", "15", CLUSTER, "--port", str(port))
    assert made.returncode == 0, made.stderr
    try:
        started = pg("pg_ctlcluster", "15", CLUSTER, "start")
        assert started.returncode == 0, started.stderr
        password = uuid.uuid4().hex
        set_pw = pg("psql", "-q", "-p", str(port), "-c", f"\"ALTER USER postgres PASSWORD '{password}'\"",
                    user="postgres")
        assert set_pw.returncode == 0, set_pw.stderr
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}"
    finally:
        pg("pg_dropcluster", "--stop", "15", CLUSTER)


def test_postgres_restarted_mid_study_loses_and_duplicates_no_trial(tmp_path, subset_root, own_postgres,
                                                                    mlflow_server):
    import sqlalchemy

    admin = sqlalchemy.create_engine(f"{own_postgres}/postgres", isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text('CREATE DATABASE "optuna"'))
    url = f"{own_postgres}/optuna"
    tracking = mlflow_server()
    n_trials = 3
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="restart", n_trials=n_trials, storage=url,
                      tracking_uri=tracking, teacher=TEACHER, student=STUDENT,
                      data={"dataset": "cifar10", "root": str(subset_root), "limit_per_file": 20})
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})  # the test's own looks
    env = {"OMP_NUM_THREADS": "1"}
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    for i in range(2):
        (tmp_path / f"w{i}").mkdir()
    workers = [start(["study", "worker", str(spec)], tmp_path / f"w{i}", logs[i], env) for i in range(2)]
    try:
        deadline = time.monotonic() + 600
        while not training_past_epoch_1(storage, "restart"):
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), \
                "\n".join(p.read_text() for p in logs)
            time.sleep(0.3)
        # fast shutdown (every session cut), a few seconds down, up again: a restart with a failover's pause
        stopped = pg("pg_ctlcluster", "15", CLUSTER, "stop")
        assert stopped.returncode == 0, stopped.stderr
        time.sleep(4)
        restarted = pg("pg_ctlcluster", "15", CLUSTER, "start")
        assert restarted.returncode == 0, restarted.stderr
        codes = [w.wait(timeout=600) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    texts = [p.read_text() for p in logs]
    assert any("connection lost" in t and "reconnecting for up to 60 s" in t for t in texts), texts
    for i, code in enumerate(codes):
        if code != 0:  # a worker may stop with the resume line; what it says must then work
            assert code == 2 and "Resume with: kdsweep study worker" in texts[i], texts[i]
            again = run_cli("study", "worker", str(spec), cwd=tmp_path / f"w{i}", timeout=600)
            assert again.returncode == 0, again.stdout + again.stderr
    assert not any("Traceback" in t for t in texts), texts

    trials = optuna.load_study(study_name="restart", storage=url).trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials  # none lost, none extra
    assert len({t.number for t in trials}) == len(trials)
    # a failed trial (if the restart cut one) was retried once, by its copy
    for t in trials:
        if t.state == TrialState.FAIL:
            assert [c.state for c in trials if c.system_attrs.get("failed_trial") == t.number] == [TrialState.COMPLETE]
    runs = distilled_runs(tracking, "restart")
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id_seed0"] for t in complete)
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        assert logged_epochs(tracking, r.info.run_id) == [1, 2, 3]
    storage.engine.dispose()


# -- the disk fills while a checkpoint is written ---------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (needs root, as in CI); unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Write into ``folder`` until the disk is full; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler


def test_disk_full_while_a_checkpoint_is_written_stops_cleanly_and_resumes(tmp_path, subset_root, small_disk):
    from kdsweep.core.checkpoint import load_checkpoint

    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "progress").symlink_to(small_disk)  # per-epoch checkpoints on the small disk
    write_spec(tmp_path / "spec.yaml", subset_root, name="full", n_trials=1, teacher=TEACHER, student=STUDENT,
               data={"dataset": "cifar10", "root": str(subset_root), "limit_per_file": 20})
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    log = tmp_path / "study.log"
    proc = start(["study", "run", "spec.yaml"], tmp_path, log)
    filled: list[Path] = []
    try:  # full after the trial's first epoch was saved: its second epoch's checkpoint does not fit
        while_paused(proc, lambda: training_past_epoch_1(storage, "full"), lambda: filled.append(fill(small_disk)),
                     600, log)
        assert proc.wait(timeout=300) == 2, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    (error,) = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert "No space left on device while writing a" in error and "the previous one is kept" in error, text
    assert "Resume with: kdsweep study run spec.yaml" in text and "Traceback" not in text
    (saved,) = sorted(small_disk.glob("distilled-*.pt"))
    assert load_checkpoint(saved)["epoch"] == 1  # the previous checkpoint, whole
    assert not list(small_disk.glob(".*.tmp"))  # no half-written temp file

    filled[0].unlink()  # space is free again
    again = run_cli("study", "run", "spec.yaml", cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    first, retry = optuna.load_study(study_name="full", storage=storage).trials
    assert (first.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert first.user_attrs["interrupted"] is True and retry.params == first.params
    run_id = retry.user_attrs["mlflow_run_id_seed0"]
    assert run_id == first.user_attrs["mlflow_run_id_seed0"]
    tracking = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    # went on from epoch 1: epoch 2 (whose checkpoint failed) trained again, each epoch logged once
    assert logged_epochs(tracking, run_id) == [1, 2, 3]


def test_only_a_lost_connection_is_waited_for_not_a_wrong_password(postgres_server):
    """What the reconnect loop (storage.py) retries, told apart on real errors of a real server."""
    import sqlalchemy

    from kdsweep.study.storage import lost_connection

    def error(url: str) -> BaseException:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with pytest.raises(sqlalchemy.exc.OperationalError) as info:
            engine.connect().close()
        return info.value

    wrong = sqlalchemy.engine.make_url(f"{postgres_server}/postgres").set(password="not-the-password")
    assert lost_connection(error(wrong.render_as_string(hide_password=False))) is None  # waiting cannot mend it
    closed = f"postgresql://postgres:x@127.0.0.1:{free_port()}/optuna"  # down, or restarting
    assert lost_connection(error(closed)) is not None
