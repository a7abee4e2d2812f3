"""Shared fixtures: the real CIFAR-10 subset, small generated data, the CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBSET = REPO.parent / "shared" / "datasets" / "cifar10-subset"


def require_or_skip(reason: str) -> None:
    """Skip with ``reason``; in CI (KDSWEEP_REQUIRE_SERVICES=1) a missing service is a failure."""
    if os.environ.get("KDSWEEP_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def subset_root() -> Path:
    if not (SUBSET / "cifar-10-batches-bin").is_dir():
        require_or_skip(f"CIFAR-10 subset not found at {SUBSET}")
    return SUBSET


@pytest.fixture(scope="session")
def tiny_imageset(subset_root):
    """60 real images per official file: 300 train / 60 test, enough for a fast CPU run."""
    from kdsweep.core.data import load_dataset

    return load_dataset("cifar10", subset_root, limit_per_file=60)


@pytest.fixture(scope="session")
def kd_data():
    """Generated 16x16 images, 4 classes: a few steps per epoch for packed-training tests."""
    from kdsweep.core.data import synthetic_imageset

    return synthetic_imageset(n_train=192, n_test=64, num_classes=4, size=16, seed=0)


@pytest.fixture(scope="session")
def kd_teacher(kd_data):
    """An untrained resnet8 x0.5 teacher (BatchNorm folded); what it outputs does not matter here."""
    import torch

    from kdsweep.core.models import build_model
    from kdsweep.core.teachers import OnlineTeacher

    torch.manual_seed(1)
    return OnlineTeacher(build_model("resnet8", num_classes=kd_data.num_classes, width=0.5), fold_bn=True)


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m kdsweep ARGS`` in ``cwd`` as a real process."""
    full_env = {k: v for k, v in os.environ.items() if k != "KDSWEEP_DATA_ROOT"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "kdsweep", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def sigint_default() -> None:
    """``preexec_fn`` for processes that must take Ctrl-C: a shell's background job (``cmd &``)
    starts with SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_when(proc: subprocess.Popen, ready: Callable[[], bool], sig: int, timeout: float,
                log: Path | None = None) -> None:
    """Send ``sig`` to ``proc`` at a moment when ``ready()`` holds.

    The process is paused (SIGSTOP) while ``ready()`` looks, so it cannot move on between the look
    and the signal: on a fast machine a tiny epoch, or a whole trial, ends in milliseconds. A signal
    sent while paused is delivered when the process continues.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() >= deadline:
            why = "the process ended" if proc.poll() is not None else f"{timeout:.0f} s passed"
            raise AssertionError(f"{why} before the moment came:\n{log.read_text() if log else ''}")
        os.kill(proc.pid, signal.SIGSTOP)
        hit = False
        try:
            hit = ready()
            if hit:
                os.kill(proc.pid, sig)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        if hit:
            return
        time.sleep(0.05)


def write_spec(path: Path, data_root: Path, **overrides) -> Path:
    """A tiny study spec (resnet8 teacher, narrow resnet8 students) on ``data_root``."""
    import yaml

    spec = {
        "name": "tiny",
        "seeds": [0],
        "data": {"dataset": "cifar10", "root": str(data_root), "limit_per_file": 40},
        "teacher": {"arch": "resnet8", "width": 0.5, "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05}},
        "student": {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05}},
        "search": {"kd": {"temperature": {"low": 2.0, "high": 6.0}, "alpha": {"low": 0.5, "high": 0.9}},
                   "ema_decay": {"choices": [0.0, 0.9]}},
        "sampler": "random",
        "pruner": "none",
        "n_trials": 2,
        "device": "cpu",
    }
    for key, value in overrides.items():
        spec[key] = value
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# -- PostgreSQL and MLflow servers -----------------------------------------------------------

POSTGRES_ENV = "KDSWEEP_TEST_POSTGRES"  # postgresql://USER:PASSWORD@HOST:PORT, no database name


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server from $KDSWEEP_TEST_POSTGRES (.ci/run starts one and sets it)."""
    import sqlalchemy

    url = os.environ.get(POSTGRES_ENV, "").rstrip("/")
    if not url:
        require_or_skip(f"${POSTGRES_ENV} is not set (e.g. postgresql://postgres:PASS@127.0.0.1:5432)")
    engine = sqlalchemy.create_engine(f"{url}/postgres", poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        require_or_skip(f"PostgreSQL from ${POSTGRES_ENV} not reachable: {str(exc).splitlines()[0]}")
    return url


@pytest.fixture
def postgres_db(postgres_server):
    """Factory: a fresh, empty database per call, URL returned; all dropped after the test."""
    import uuid

    import sqlalchemy

    admin = sqlalchemy.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    made: list[str] = []

    def make(prefix: str = "kdsweep_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return f"{postgres_server}/{name}"

    yield make
    with admin.connect() as conn:
        for name in made:  # FORCE: a killed worker's connections may linger for a moment
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(postgres_db) -> str:
    """A fresh database for this test, e.g. postgresql://postgres:PASS@127.0.0.1:5432/kdsweep_test_ab12."""
    return postgres_db()


@pytest.fixture
def mlflow_server(tmp_path_factory):
    """Factory: start a real `mlflow server` on a free loopback port; returns its http URL.

    ``mlflow_server()`` uses a fresh SQLite file, ``mlflow_server("postgresql://...")`` that
    database. Artifacts are served by the server from a temporary folder; all stop after the test.
    """
    from kdsweep.tracking.server import ServerOptions, launch

    servers = []

    def start(backend_store_uri: str | None = None) -> str:
        root = tmp_path_factory.mktemp("mlflow-server")
        opts = ServerOptions(port=free_port(), backend_store_uri=backend_store_uri or f"sqlite:///{root}/mlflow.db",
                             artifacts_destination=str(root / "artifacts"), workers=1,
                             log_file=root / "server.log")
        servers.append(launch(opts, wait=300))
        return servers[-1].url

    yield start
    for server in servers:
        server.stop()


def kd_config(**kw):
    """A TrainConfig written the short way: ``alpha``/``temperature`` mean method kd (alpha 0: ce)."""
    from kdsweep.core.config import TrainConfig

    alpha, temperature = kw.pop("alpha", None), kw.pop("temperature", None)
    if alpha is not None and alpha > 0 or (alpha is None and temperature is not None):
        params = {k: v for k, v in (("alpha", alpha), ("temperature", temperature)) if v is not None}
        kw.update(method="kd", method_params=params)
    return TrainConfig(**kw)
