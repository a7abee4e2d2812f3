"""Preflight: a store that is wrong or down, a bad teacher checkpoint, a recipe that does not fit the
data. Each is a real CLI call: exit 2, one line per problem naming the field (URLs with the password
masked), and nothing created: no mlruns/, no SQLite file, no PostgreSQL database or table."""

from __future__ import annotations

import http.server
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy
import torch
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from conftest import free_port, run_cli, write_spec
from kdsweep.cli import main
from kdsweep.core.checkpoint import save_checkpoint
from kdsweep.core.models import build_model
from kdsweep.study.preflight import preflight
from kdsweep.study.probes import HttpAuth, masked, store_problems
from kdsweep.study.spec import load_spec
from kdsweep.tracking.server import healthy


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("KDSWEEP_DATA_ROOT", raising=False)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return work


def created(workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.name != "spec.yaml")


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("Error: "), result.output
    return result, [lines[0].removeprefix("Error: "), *lines[1:]]


@pytest.fixture
def http_port(tmp_path):
    """A plain http.server on a free loopback port: it speaks HTTP, not PostgreSQL and not MLflow."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def databases(postgres_server: str) -> set[str]:
    engine = sqlalchemy.create_engine(f"{postgres_server}/postgres", poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        return set(conn.execute(sqlalchemy.text("SELECT datname FROM pg_database")).scalars())


def tables(url: str) -> list[str]:
    return sqlalchemy.inspect(sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)).get_table_names()


# -- stores ------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--storage", "--tracking-uri"])
@pytest.mark.parametrize("case", ["wrong password", "unknown database"])
def test_postgres_that_refuses_exits_2_naming_the_field_and_masked_url(workdir, subset_root, postgres_server,
                                                                       case, flag):
    real = make_url(postgres_server)
    wrong = secrets.token_hex(6)
    url = (real.set(password=f"wrong{wrong}", database="postgres") if case == "wrong password"
           else real.set(database=f"kdsweep_absent_{wrong}")).render_as_string(hide_password=False)
    spec = write_spec(workdir / "spec.yaml", subset_root)
    started = time.monotonic()
    result, lines = invoke("study", "run", str(spec), flag, url)
    assert time.monotonic() - started < 30
    assert result.exit_code == 2
    field = flag.removeprefix("--").replace("-", "_")
    masked = f"postgresql://{real.username}:***@{real.host}:{real.port or 5432}/{make_url(url).database}"
    (line,) = lines
    assert line.startswith(f"{spec}: {field}='{masked}': "), line
    expected = "password authentication failed" if case == "wrong password" else "does not exist"
    assert expected in line
    assert f"wrong{wrong}" not in result.output and real.password not in result.output  # no password printed
    assert created(workdir) == []  # no mlruns/, so no SQLite store stood in for the refused one
    if case == "unknown database":  # not made either (other tests make and drop databases meanwhile)
        assert make_url(url).database not in databases(postgres_server)


def test_port_where_nothing_listens_is_named_at_once(workdir, subset_root):
    port = free_port()
    spec = write_spec(workdir / "spec.yaml", subset_root)
    url = f"postgresql://kdsweep:hunter2-secret@127.0.0.1:{port}/optuna"
    result, lines = invoke("study", "run", str(spec), "--storage", url)
    assert result.exit_code == 2
    assert lines == [f"{spec}: storage='postgresql://kdsweep:***@127.0.0.1:{port}/optuna': nothing listens on "
                     f"127.0.0.1:{port} (connection refused): is PostgreSQL running there?"]
    assert "hunter2" not in result.output
    assert created(workdir) == []


def test_port_where_an_http_server_listens_is_not_postgres(workdir, subset_root, http_port):
    spec = write_spec(workdir / "spec.yaml", subset_root)
    url = f"postgresql://kdsweep:hunter2-secret@127.0.0.1:{http_port}/optuna"
    started = time.monotonic()
    result, lines = invoke("study", "run", str(spec), "--storage", url)
    assert time.monotonic() - started < 15  # told apart at once, not after libpq's timeout
    assert result.exit_code == 2
    (line,) = lines
    assert line.startswith(f"{spec}: storage='postgresql://kdsweep:***@127.0.0.1:{http_port}/optuna': "
                           f"127.0.0.1:{http_port} is not a PostgreSQL server"), line
    assert "hunter2" not in result.output
    assert created(workdir) == []


def test_tracking_uri_on_an_http_server_that_is_not_mlflow(workdir, subset_root, http_port):
    spec = write_spec(workdir / "spec.yaml", subset_root)
    result, lines = invoke("study", "run", str(spec), "--tracking-uri", f"http://127.0.0.1:{http_port}")
    assert result.exit_code == 2
    assert lines == [f"{spec}: tracking_uri='http://127.0.0.1:{http_port}': the server answered 404 on /health: "
                     "not an MLflow tracking server?"]
    assert created(workdir) == []


def test_silent_port_fails_within_the_timeout():
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        (line,) = store_problems("storage", f"postgresql://u:pw@127.0.0.1:{port}/db", timeout=3)
        assert time.monotonic() - started < 6
    assert line.startswith(f"storage='postgresql://u:***@127.0.0.1:{port}/db': no answer from 127.0.0.1:{port}")


@pytest.mark.parametrize("url,expected", [
    ("sqlite:///spec.yaml", "spec.yaml is not a SQLite database"),
    ("sqlite:///spec.yaml/optuna.db", "cannot create spec.yaml/optuna.db: spec.yaml is a file, not a folder"),
])
def test_sqlite_store_that_cannot_be_used(workdir, subset_root, url, expected):
    spec = write_spec(workdir / "spec.yaml", subset_root)
    result, lines = invoke("study", "run", str(spec), "--storage", url)
    assert result.exit_code == 2
    assert lines == [f"{spec}: storage='{url}': {expected}"]
    assert created(workdir) == []


def test_one_database_for_both_stores_is_refused(workdir, subset_root, postgres_url):
    spec = write_spec(workdir / "spec.yaml", subset_root)
    result, lines = invoke("study", "run", str(spec), "--storage", postgres_url, "--tracking-uri", postgres_url)
    assert result.exit_code == 2
    assert lines == [f"{spec}: storage and tracking_uri are the same database ('{masked(postgres_url)}'); Optuna "
                     "and MLflow each need their own (both keep an alembic_version table)"]
    assert tables(postgres_url) == [] and created(workdir) == []

    # a worker told to log to a database (not a server) sees the URL masked too
    result, lines = invoke("study", "worker", str(spec), "--storage", postgres_url, "--tracking-uri",
                           postgres_url.replace("/kdsweep_test", "/other_kdsweep_test"))
    assert result.exit_code == 2 and make_url(postgres_url).password not in result.output
    assert any(line.startswith(f"{spec}: tracking_uri='postgresql://postgres:***@") and "workers log through an "
               "MLflow server" in line for line in lines), lines


def test_mlflow_basic_auth_refusals_are_named(workdir, tmp_path, monkeypatch):
    """A real `mlflow server --app-name basic-auth`: no login and a wrong one are 401, named; the
    right one passes; a Host the server does not allow is 403, named."""
    port, password = free_port(), secrets.token_urlsafe(12)
    root = tmp_path / "auth-server"
    root.mkdir()
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--app-name", "basic-auth",
           "--allowed-hosts", f"127.0.0.1:{port}"]
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while not healthy(url):
            assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-2000:]
            time.sleep(1)
        (line,) = store_problems("tracking_uri", url)
        assert line == (f"tracking_uri='{url}': 401 Unauthorized on /api/2.0/mlflow/experiments/search: the server "
                        "needs a login (MLflow's client sends MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
                        "or MLFLOW_TRACKING_TOKEN)")
        (line,) = store_problems("tracking_uri", url, http_auth=HttpAuth("admin", "wrong-" + password))
        assert "401 Unauthorized" in line and "the login given was refused" in line and password not in line
        assert store_problems("tracking_uri", url, http_auth=HttpAuth("admin", password)) == []
        (line,) = store_problems("tracking_uri", f"http://localhost:{port}", http_auth=HttpAuth("admin", password))
        assert ("403 Forbidden on /api/2.0/mlflow/experiments/search: the server's --allowed-hosts does not list "
                "the host") in line

        # the CLI sends the login from MLflow's variables, and names a refusal before anything is made
        spec = write_spec(workdir / "spec.yaml", workdir)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-" + password)
        result, lines = invoke("study", "run", str(spec), "--tracking-uri", url)
        assert result.exit_code == 2
        assert [line for line in lines if "tracking_uri" in line] == [
            f"{spec}: tracking_uri='{url}': 401 Unauthorized on /api/2.0/mlflow/experiments/search: the login "
            "given was refused (MLflow's client sends MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
            "or MLFLOW_TRACKING_TOKEN)"]
        assert created(workdir) == []
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


# -- teacher checkpoint ------------------------------------------------------------------------

def kdsweep_weights(path: Path, arch: str, width: float, num_classes: int) -> Path:
    model = build_model(arch, num_classes=num_classes, width=width)
    return save_checkpoint({"arch": arch, "width": width, "num_classes": num_classes,
                            "state_dict": model.state_dict()}, path)


class NotWeights:
    pass


def checkpoint_cases(folder: Path) -> dict[str, tuple[Path, str]]:
    garbage = folder / "garbage.pt"
    garbage.write_bytes(random.Random(0).randbytes(2048))
    code = folder / "code.pt"
    torch.save({"w": torch.zeros(2), "x": NotWeights()}, code)
    bare = folder / "bare.pt"
    torch.save(build_model("resnet8", num_classes=100, width=0.5).state_dict(), bare)
    return {  # case: (file, what the line says after "teacher.checkpoint='...': ")
        "garbage": (garbage, "truncated or corrupted checkpoint ("),
        "carries code": (code, "refused to load (not plain weights): Unsupported global: GLOBAL "),
        "other arch": (kdsweep_weights(folder / "arch.pt", "resnet14", 0.5, 10),
                       "saved for arch='resnet14'; the study needs arch='resnet8'"),
        "other width": (kdsweep_weights(folder / "width.pt", "resnet8", 1.0, 10),
                        "saved for width=1.0; the study needs width=0.5"),
        "other class count": (kdsweep_weights(folder / "classes.pt", "resnet8", 0.5, 100),
                              "saved for num_classes=100; the study needs num_classes=10"),
        "bare state_dict, other class count": (bare, "does not fit teacher resnet8 x0.5 with 10 classes: 2 of "
                                                     "another shape (e.g. 'fc.weight': [100, 32], the model has "
                                                     "[10, 32])"),
    }


def test_bad_teacher_checkpoints_give_one_short_line_each(workdir, subset_root, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for case, (path, expected) in checkpoint_cases(folder).items():
        spec = write_spec(workdir / "spec.yaml", subset_root,
                          teacher={"arch": "resnet8", "width": 0.5, "checkpoint": str(path)})
        result, lines = invoke("study", "run", str(spec))
        assert result.exit_code == 2, case
        assert len(lines) == 1, (case, lines)
        assert lines[0].startswith(f"{spec}: teacher.checkpoint='{path}': {expected}"), (case, lines[0])
        assert len(lines[0]) < 400 and "weights_only" not in lines[0], case  # none of torch's advice text
        assert created(workdir) == [], case


def test_fitting_checkpoint_passes(workdir, subset_root, tmp_path):
    path = kdsweep_weights(tmp_path / "teacher.pt", "resnet8", 0.5, 10)
    spec = load_spec(write_spec(workdir / "spec.yaml", subset_root,
                                teacher={"arch": "resnet8", "width": 0.5, "checkpoint": str(path)}))
    data = preflight(spec, source="spec.yaml")
    # 40 per file, 5 files, 10% held out for validation: loaded once, handed to the run
    assert len(data.train_y) + len(data.val_y) == 200 and len(data.val_y) == 19
    assert created(workdir) == []


# -- recipe vs data ----------------------------------------------------------------------------

RECIPE = {"epochs": 1, "lr": 0.05}
DATA_CASES = {  # case: (spec overrides, the lines expected after "spec.yaml: ")
    "student batch above the split": (
        {"student": {"arch": "resnet8", "width": 0.25, "recipe": {**RECIPE, "batch_size": 512}}},
        ["student.recipe.batch_size=512: larger than the training split (181 training images of cifar10 in "
         "'{root}', data.limit_per_file=40, 19 more held out for validation); use at most 181"]),
    "teacher batch above the split": (
        {"teacher": {"arch": "resnet8", "width": 0.5, "recipe": {**RECIPE, "batch_size": 182}}},
        ["teacher.recipe.batch_size=182: larger than the training split (181 training images of cifar10 in "
         "'{root}', data.limit_per_file=40, 19 more held out for validation); use at most 181"]),
    "limit larger than the files": (
        {"data": {"dataset": "cifar10", "root": "{root}", "limit_per_file": 5000}},
        ["data.limit_per_file=5000: the 5 training files hold fewer records than that (5085 images in all), "
         "so it cuts nothing; lower it or leave it out"]),
    "classes missing from a tiny split": (
        {"data": {"dataset": "cifar10", "root": "{root}", "limit_per_file": 1},
         "student": {"arch": "resnet8", "width": 0.25, "recipe": {**RECIPE, "batch_size": 4}},
         "teacher": {"arch": "resnet8", "width": 0.5, "recipe": {**RECIPE, "batch_size": 4}}},
        ["data.limit_per_file=1: the training split has no image of "]),
    "images too small for the model": (
        {"data": {"dataset": "cifar10", "root": "{root}", "limit_per_file": 40, "image_size": 8},
         "student": {"arch": "cnn5", "recipe": {**RECIPE, "batch_size": 64}}},
        ["student.arch='cnn5': does not take the data's 8x8 images ("]),
    "searched width the model cannot take": (
        {"student": {"arch": "torchvision_resnet18", "recipe": {**RECIPE, "batch_size": 64}},
         "search": {"width": {"choices": [0.5]}}},
        # refused by the spec's validation already (study validate says the same)
        ["search.width: student.arch='torchvision_resnet18' has a fixed width (only built-in models scale)"]),
}


def fill(value, root: Path):
    if isinstance(value, dict):
        return {k: fill(v, root) for k, v in value.items()}
    return value.replace("{root}", str(root)) if isinstance(value, str) else value


@pytest.mark.parametrize("case", list(DATA_CASES), ids=list(DATA_CASES))
def test_recipe_that_does_not_fit_the_data_exits_2_before_anything_is_made(workdir, subset_root, case):
    overrides, expected = DATA_CASES[case]
    spec = write_spec(workdir / "spec.yaml", subset_root, **fill(overrides, subset_root))
    result, lines = invoke("study", "run", str(spec))
    assert result.exit_code == 2
    assert len(lines) == len(expected), lines
    for line, start in zip(lines, expected):
        assert line.startswith(f"{spec}: {start.replace('{root}', str(subset_root))}"), line
    assert created(workdir) == []


# -- all at once, and every command that makes stores ------------------------------------------

def test_every_problem_is_reported_together_and_postgres_gets_no_table(workdir, subset_root, tmp_path,
                                                                      postgres_url):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 50)
    # storage is a real, empty database that accepts the login: it must stay empty
    spec = write_spec(workdir / "spec.yaml", subset_root, storage=postgres_url,
                      tracking_uri=f"http://127.0.0.1:{free_port()}",
                      teacher={"arch": "resnet8", "width": 0.5, "checkpoint": str(garbage)},
                      student={"arch": "resnet8", "width": 0.25, "recipe": {**RECIPE, "batch_size": 300}})
    result, lines = invoke("study", "run", str(spec))
    assert result.exit_code == 2
    fields = sorted(line.split(": ", 2)[1].split("=", 1)[0] for line in lines)
    assert fields == ["student.recipe.batch_size", "teacher.checkpoint", "tracking_uri"], lines
    assert created(workdir) == []
    assert tables(postgres_url) == []  # the good store was checked, not opened: no Optuna tables

    # the worker adds its own refusals (SQLite cannot be shared) to the same pass
    result, lines = invoke("study", "worker", str(spec), "--storage", "sqlite:///mlruns/optuna.db")
    assert result.exit_code == 2
    fields = sorted(line.split(": ", 2)[1].split("=", 1)[0] for line in lines)
    assert fields == ["storage", "student.recipe.batch_size", "teacher.checkpoint", "tracking_uri"], lines
    assert created(workdir) == []


def test_teacher_train_and_server_start_check_their_stores(workdir, subset_root, postgres_server):
    spec = write_spec(workdir / "spec.yaml", subset_root)
    uri = f"http://127.0.0.1:{free_port()}"
    result, lines = invoke("teacher", "train", str(spec), "--tracking-uri", uri,
                           "--storage", "postgresql://u:pw@127.0.0.1:1/never-checked")  # teacher train opens no study
    assert result.exit_code == 2
    assert lines == [f"{spec}: tracking_uri='{uri}': MLflow server not reachable (Connection refused)"]
    wrong = make_url(postgres_server).set(password="wrong-pass-1", database="mlflow").render_as_string(
        hide_password=False)
    result, lines = invoke("server", "start", "--port", str(free_port()), "--backend-store-uri", wrong)
    assert result.exit_code == 2
    (line,) = lines
    assert line.startswith("--backend-store-uri='postgresql://postgres:***@") and "password authentication" in line
    assert "wrong-pass-1" not in result.output
    assert created(workdir) == []


def test_a_real_process_prints_no_traceback_and_no_password(tmp_path, subset_root, postgres_server):
    wrong = make_url(postgres_server).set(password="wrong-pass-2", database="postgres").render_as_string(
        hide_password=False)
    write_spec(tmp_path / "spec.yaml", subset_root, storage=wrong)
    done = run_cli("study", "run", "spec.yaml", "--set", "student.recipe.batch_size=999", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "wrong-pass-2" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: spec.yaml: storage='postgresql://postgres:***@"), lines
    assert lines[1].startswith("spec.yaml: student.recipe.batch_size=999: larger than the training split")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
