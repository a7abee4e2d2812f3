"""``kdsweep server start`` runs a real MLflow server; SQLite refuses a second writer; compose parses."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port, require_or_skip, run_cli, write_spec
from kdsweep.errors import StudyError
from kdsweep import stores
from kdsweep.tracking.server import healthy

STUDENT = {"arch": "resnet8", "width": 0.5, "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05}}


def read_until(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """The first stdout line starting with ``prefix``; fails with the output so far otherwise."""
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {prefix!r} line within {timeout}s: {''.join(seen)}") from None
        if line is None:
            raise AssertionError(f"exited ({proc.wait()}) before {prefix!r}: {''.join(seen)}")
        seen.append(line)
        if line.startswith(prefix):
            return line


def test_server_start_serves_a_study_and_stops_cleanly(tmp_path, subset_root):
    from mlflow.tracking import MlflowClient

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "kdsweep", "server", "start", "--port", str(port), "--workers", "1"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert read_until(server, "MLflow UI:", 300).split()[2] == url
        assert healthy(url)
        one_epoch = {"epochs": 1, "batch_size": 64, "lr": 0.05}
        spec = write_spec(tmp_path / "spec.yaml", subset_root, name="served", n_trials=1,
                          teacher={"arch": "resnet8", "width": 1.0, "recipe": one_epoch},
                          student={**STUDENT, "recipe": one_epoch})
        result = run_cli("study", "run", str(spec), "--tracking-uri", url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr

        client = MlflowClient(url)
        exp = client.get_experiment_by_name("served")
        runs = client.search_runs([exp.experiment_id])
        assert sorted(r.data.tags["role"] for r in runs) == ["baseline", "distilled", "study", "teacher"]
        distilled = next(r for r in runs if r.data.tags["role"] == "distilled")
        # artifacts travel through the server (--serve-artifacts) into --artifacts-destination
        assert distilled.info.artifact_uri.startswith("mlflow-artifacts:")
        assert [f.path for f in client.list_artifacts(distilled.info.run_id, "checkpoint")]
        stored = list((tmp_path / "mlruns" / "artifacts").rglob("checkpoint/*.pt"))
        assert len(stored) == 3  # teacher, baseline, distilled checkpoints on the server's side
        models = list((tmp_path / "mlruns" / "artifacts").rglob("MLmodel"))
        assert len(models) == 3  # and the same weights as the runs' logged models
        assert (tmp_path / "mlruns" / "mlflow.db").is_file()  # the default SQLite backend store
    finally:
        server.send_signal(signal.SIGTERM)  # as `kill` or Ctrl-C would
        server.wait(60)
    assert server.returncode == 0
    assert not healthy(url)  # MLflow's own worker processes went down with it


@pytest.mark.parametrize("args, field", [
    (["--backend-store-uri", "./mlruns"], "backend_store_uri='./mlruns'"),
    (["--backend-store-uri", "file:///tmp/mlruns"], "backend_store_uri='file:///tmp/mlruns'"),
    (["--port", "BUSY"], "port="),
])
def test_server_start_refuses_bad_settings_before_starting(tmp_path, args, field):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        args = [port if a == "BUSY" else a for a in args]
        if "--port" not in args:
            args += ["--port", str(free_port())]
        result = run_cli("server", "start", *args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], result.stderr
    assert not (tmp_path / "mlruns").exists()  # refused before anything was made


def test_sqlite_store_refuses_a_second_writer(tmp_path):
    url = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    with stores.single_writer(url, field="storage"):
        with pytest.raises(StudyError, match="another kdsweep process.*PostgreSQL"):
            with stores.single_writer(url, field="storage"):
                pass
    with stores.single_writer(url, field="storage"):  # free again once the first writer is done
        pass


def test_a_forked_child_does_not_keep_the_writer_lock_of_a_killed_parent(tmp_path):
    # the stream loader's DataLoader workers are forks of the trainer: when the trainer is killed (no
    # unlock), a worker alive a moment longer must not keep the database locked against the rerun
    import multiprocessing

    url = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    ctx = multiprocessing.get_context("fork")
    started, stop = ctx.Event(), ctx.Event()

    def worker() -> None:
        started.set()
        stop.wait(60)

    def trainer() -> None:
        with stores.single_writer(url, field="storage"):
            ctx.Process(target=worker).start()
            started.wait(60)
            os._exit(0)  # as if killed: the lock is never released by the trainer itself

    proc = ctx.Process(target=trainer)
    proc.start()
    deadline = time.monotonic() + 60
    while proc.exitcode is None and time.monotonic() < deadline:  # not join(): the worker holds its sentinel
        time.sleep(0.05)
    try:
        assert started.is_set()
        with stores.single_writer(url, field="storage"):  # the worker runs on; the lock is free
            pass
    finally:
        stop.set()


def test_second_study_process_on_one_sqlite_file_is_refused(tmp_path, subset_root):
    store = tmp_path / "mlruns" / "optuna.db"
    spec = write_spec(tmp_path / "spec.yaml", subset_root, storage=f"sqlite:///{store}", student=STUDENT)
    with stores.single_writer(f"sqlite:///{store}", field="storage"):  # a study already running
        result = run_cli("study", "run", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert "another kdsweep process is writing to" in result.stderr and "PostgreSQL" in result.stderr


@pytest.mark.parametrize("flags, field", [
    ([], "storage='sqlite:///mlruns/optuna.db'"),
    (["--storage", "postgresql://u@127.0.0.1/optuna"], "tracking_uri='sqlite:///mlruns/mlflow.db'"),
])
def test_worker_refuses_sqlite_stores(tmp_path, subset_root, flags, field):
    spec = write_spec(tmp_path / "spec.yaml", subset_root)
    result = run_cli("study", "worker", str(spec), *flags, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert field in result.stderr and ("PostgreSQL" in result.stderr or "MLflow server" in result.stderr)
    assert not (tmp_path / "mlruns").exists()


def compose_config(env_file: Path) -> subprocess.CompletedProcess:
    if shutil.which("docker-compose") is None:
        require_or_skip("docker-compose not installed (Debian package docker-compose)")
    # only the env file speaks: the shell's own POSTGRES_* or MLFLOW_* would win over it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "MLFLOW_", "DASHBOARD_"))}
    return subprocess.run(["docker-compose", "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml"),
                           "config"], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def test_compose_file_is_accepted_and_keeps_its_promises(tmp_path):
    result = compose_config(REPO / ".env.example")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "mlflow", "optuna-dashboard"}
    for name, service in services.items():  # published on loopback only
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), name
    assert "healthcheck" in services["postgres"] and "postgres-data" in config["volumes"]
    mlflow = services["mlflow"]
    cmd = mlflow["command"]
    assert "--app-name=basic-auth" in cmd and "--serve-artifacts" in cmd
    assert any(a.startswith("--allowed-hosts=") and "mlflow:5000" in a for a in cmd)
    # separate databases: both engines keep an alembic_version table
    assert any(a.startswith("--backend-store-uri=") and a.endswith("/mlflow") for a in cmd)
    assert services["optuna-dashboard"]["command"][-1].endswith("/optuna")
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == "change-me"  # from the env file
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"

    # without a password the file refuses to start, naming the variable
    (tmp_path / "empty.env").write_text("POSTGRES_USER=kdsweep\n")
    result = compose_config(tmp_path / "empty.env")
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr
