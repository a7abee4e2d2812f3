"""Store URLs checked from their text before anything opens them: what kdsweep runs on, one line otherwise."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kdsweep.cli import main
from kdsweep.stores import url_problem

PASSWORD = "hunter2-secret"


@pytest.mark.parametrize("field, url", [
    ("storage", "sqlite:///mlruns/optuna.db"), ("storage", "sqlite:////abs/optuna.db"),
    ("storage", f"postgresql://u:{PASSWORD}@127.0.0.1:5432/optuna"), ("storage", "postgresql+psycopg2://u@h/db"),
    ("storage", "postgresql:///optuna"),
    ("tracking_uri", "sqlite:///mlruns/mlflow.db"), ("tracking_uri", "http://127.0.0.1:5000"),
    ("tracking_uri", f"https://u:{PASSWORD}@mlflow.lab:443/"), ("tracking_uri", "http://[::1]:5000"),
    ("backend_store_uri", "postgresql://u@127.0.0.1/mlflow"),
])
def test_supported_stores_pass(field, url):
    assert url_problem(field, url) is None


@pytest.mark.parametrize("field, url, expected", [
    ("tracking_uri", "file:///tmp/mlruns", "must start with one of sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB, "
                                           "http(s)://HOST:PORT (an MLflow server) (file:// is not supported)"),
    ("tracking_uri", "databricks", "(not a URL)"),
    ("storage", "http://127.0.0.1:5000", "must start with one of sqlite:///PATH, "
                                         "postgresql://USER:PASSWORD@HOST:PORT/DB (http:// is not supported)"),
    ("storage", "mysql://u:pw@h/db", "(mysql:// is not supported)"),
    ("backend_store_uri", "./mlruns", "(not a URL)"),
    ("storage", "sqlite:///", "must be sqlite:///PATH"),
    ("storage", "sqlite://x.db", "must be sqlite:///PATH"),
    ("tracking_uri", "http://127.0.0.1:99999", "is not a valid URL (Port out of range 0-65535)"),
    ("tracking_uri", "http://[::1", "is not a valid URL (Invalid IPv6 URL)"),
    ("tracking_uri", "http://", "names no host"),
    ("tracking_uri", "http://127.0.0.1:0", "names port 0"),
    ("storage", "sqlite:///x.db\x00", "contains a space or a control character"),
])
def test_unsupported_or_malformed_stores_are_named(field, url, expected):
    problem = url_problem(field, url)
    assert problem is not None and expected in problem, problem


@pytest.mark.parametrize("args, line", [
    (["report", "s", "--tracking-uri", f"file://u:{PASSWORD}@host/mlruns"],
     "tracking_uri='file://u:***@host/mlruns' (from --tracking-uri): MLflow tracking URI must start with one of"),
    (["report", "s", "--storage", f"mysql://u:{PASSWORD}@127.0.0.1/db"],
     "storage='mysql://u:***@127.0.0.1/db' (from --storage): Optuna storage must start with one of"),
    (["server", "start", "--backend-store-uri", f"mysql://u:{PASSWORD}@127.0.0.1/db"],
     "backend_store_uri='mysql://u:***@127.0.0.1/db' (from --backend-store-uri): the MLflow server's database "
     "must start with one of"),
    (["study", "validate", "spec.yaml", "--storage", "file:///tmp/optuna"],
     "spec.yaml: storage='file:///tmp/optuna' (from --storage): Optuna storage must start with one of"),
])
def test_every_store_flag_is_checked_before_anything_is_made(tmp_path, monkeypatch, args, line):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text("name: x\nteacher: {arch: resnet8}\nstudent: {arch: resnet8}\ndata: {root: .}\n")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    (error,) = result.stderr.strip().splitlines()
    assert error.startswith(f"Error: {line}") and PASSWORD not in result.output, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no mlruns/, no database


@pytest.mark.parametrize("url, reason", [
    ("postgresql://u@127.0.0.1:1/mlflow", "nothing listens on 127.0.0.1:1"),
    ("sqlite:///folder", "folder is a folder, not a SQLite file"),
    ("sqlite:///spec.yaml", "spec.yaml is not a SQLite database"),
])
def test_report_asks_its_store_before_mlflow_retries_it(tmp_path, monkeypatch, url, reason):
    # MLflow retries a store that does not answer for minutes; the fuzz found report waiting on it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "spec.yaml").write_text("name: x\n")
    result = CliRunner().invoke(main, ["report", "s", "--tracking-uri", url])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"Error: tracking_uri={url!r}: {reason}" + (
        " (connection refused): is PostgreSQL running there?" if "postgresql" in url else "") + " (from --tracking-uri)"


@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:9/\udcff", "is not UTF-8 text"),
    ("sqlite:///\udcff.db", "is not UTF-8 text"),
    ("http://café.lab:5000", "not ASCII: percent-encode them"),
])
def test_urls_a_client_cannot_send_are_refused(url, expected):
    # the fuzz found report's probe crashing in http.client on the first (UnicodeEncodeError)
    assert expected in url_problem("tracking_uri", url)


def test_sqlite_paths_may_be_any_utf8():
    assert url_problem("storage", "sqlite:///études/optuna.db") is None
