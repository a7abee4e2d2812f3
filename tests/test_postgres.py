"""PostgreSQL: Optuna's storage settings, and the compose file's MLflow server run outside a container."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import optuna
import pytest
import sqlalchemy
import yaml

from conftest import REPO, free_port
from kdsweep.study.storage import open_storage
from kdsweep.tracking.server import healthy
from test_server import compose_config


def test_optuna_storage_pings_pooled_connections(postgres_url):
    # PostgreSQL and proxies drop idle connections; a pre-ping replaces them before use
    storage = open_storage(postgres_url)
    assert storage.engine.dialect.name == "postgresql"
    # a study made through the storage leaves a connection in its pool
    study_id = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "pinged")
    # the server drops every connection to the database, as an idle timeout, a proxy or a restart would
    admin = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        others = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        dropped = conn.execute(sqlalchemy.text(others)).scalars().all()
        for pid in dropped:
            assert conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    admin.dispose()
    assert dropped and storage.engine.pool.checkedin() >= 1  # the pool still holds what the server dropped
    # the next checkout pings the dead connection and replaces it: the first statement on it works
    # (the storage's own retry of a lost connection, kdsweep.study.storage, would hide a missing ping)
    with storage.engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar() not in dropped
    assert storage.get_study_name_from_id(study_id) == "pinged"


def request(url: str, *, auth: tuple[str, str] | None = None, host: str | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def compose_databases(postgres_server):
    """Run docker/postgres-init.sh against the local server, as the postgres image would."""
    pg = sqlalchemy.engine.make_url(postgres_server)
    names = {"OPTUNA_DB": f"kdsweep_optuna_{uuid.uuid4().hex[:8]}", "MLFLOW_DB": f"kdsweep_mlflow_{uuid.uuid4().hex[:8]}"}
    env = {**os.environ, **names, "POSTGRES_USER": pg.username, "PGPASSWORD": pg.password or "",
           "PGHOST": pg.host or "127.0.0.1", "PGPORT": str(pg.port or 5432)}
    done = subprocess.run(["sh", str(REPO / "docker" / "postgres-init.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    yield pg, names
    admin = sqlalchemy.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_compose_mlflow_command_runs_against_local_postgres(tmp_path, compose_databases, monkeypatch):
    from mlflow.tracking import MlflowClient

    pg, dbs = compose_databases
    admin_password, port = secrets.token_urlsafe(12), free_port()
    env_file = tmp_path / ".env"
    env_file.write_text(f"POSTGRES_USER={pg.username}\nPOSTGRES_PASSWORD={pg.password}\n"
                        f"MLFLOW_ADMIN_PASSWORD={admin_password}\nMLFLOW_SECRET_KEY={secrets.token_hex(16)}\n")
    result = compose_config(env_file)
    assert result.returncode == 0, result.stderr
    service = yaml.safe_load(result.stdout)["services"]["mlflow"]

    # the compose command line, with only what a container provides swapped for local things
    swaps = {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}",
             "--artifacts-destination=/mlflow/artifacts": f"--artifacts-destination={tmp_path / 'artifacts'}",
             "@postgres:5432/mlflow": f"@{pg.host}:{pg.port or 5432}/{dbs['MLFLOW_DB']}"}
    cmd = service["command"]
    assert cmd[:2] == ["mlflow", "server"]
    for old in swaps:
        assert any(old in arg for arg in cmd), old  # the compose file still says what this test swaps
    args = [next((a.replace(o, n) for o, n in swaps.items() if o in a), a) for a in cmd[2:]]
    env = {**os.environ, **{k: str(v) for k, v in service["environment"].items()}}
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *args], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not healthy(url):
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not answer /health"
            time.sleep(1)
        api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        admin = ("admin", admin_password)
        assert request(api) == 401  # basic-auth is on
        assert request(api, auth=("admin", "password1234")) == 401  # MLflow's old default does not work
        assert request(api, auth=admin) == 200  # the password from .env does
        assert request(api, auth=admin, host="mlflow:5000") == 200  # reached by service name
        assert request(api, auth=admin, host="evil.example") == 403  # --allowed-hosts

        # how a worker logs in: MLflow's client reads these two variables
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_password)
        client = MlflowClient(url)
        run = client.create_run(client.create_experiment("compose"))
        client.log_metric(run.info.run_id, "test_acc", 0.5)
        (tmp_path / "note.txt").write_text("hello")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        assert [p.name for p in (tmp_path / "artifacts").rglob("note.txt")] == ["note.txt"]
        # the runs live in the MLflow database, and Optuna's database stays separate and empty
        engine = sqlalchemy.create_engine(pg.set(database=dbs["MLFLOW_DB"]), poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT count(*) FROM runs")).scalar() == 1
        engine = sqlalchemy.create_engine(pg.set(database=dbs["OPTUNA_DB"]), poolclass=sqlalchemy.pool.NullPool)
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
