"""Can each store be used? Connect and log in, create nothing, answer in one line per problem.

- PostgreSQL: a raw socket first sends the SSLRequest every libpq client starts with; a
  PostgreSQL server answers one byte (``S`` or ``N``) at once, so a port where nothing listens,
  or where something else (an HTTP server) listens, is named as such instead of hanging until
  libpq's timeout. Then a real login (``SELECT 1``) tells a wrong password from a missing database.
- SQLite: the file, if there, is a SQLite database; if not, its folder could be made. Nothing is
  written: the folder and file appear only once every check passed and the study opens them.
- MLflow over http(s): ``/health`` (which MLflow's basic-auth leaves open) says the server is
  up; one read of the REST API says whether it lets this login in (401, 403 named).

Every URL is shown with its password masked; a password never reaches a message.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import struct
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

from kdsweep.stores import url_scheme

STORE_TIMEOUT = 15.0  # seconds per store, connect and login together
SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # PostgreSQL's SSLRequest packet
PG_REPLY_WAIT = 1.0  # a PostgreSQL server answers the SSLRequest in one round trip
API_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"


def masked(url: str) -> str:
    """``postgresql://kdsweep:secret@host/db`` -> ``postgresql://kdsweep:***@host/db``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: mask by pattern
        return re.sub(r"(://[^/:@\s]+):[^@\s]+@", r"\1:***@", url)


@dataclass(frozen=True)
class HttpAuth:
    """What MLflow's client would send to a tracking server (the CLI fills it from MLflow's variables)."""

    username: str | None = None
    password: str | None = None
    token: str | None = None
    insecure_tls: bool = False
    cert_path: str | None = None

    def headers(self) -> dict[str, str]:
        if self.username and self.password is not None:
            return {"Authorization": "Basic " + b64encode(f"{self.username}:{self.password}".encode()).decode()}
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure_tls:
            return ssl._create_unverified_context()
        return ssl.create_default_context(cafile=self.cert_path)


def store_problems(field: str, url: str, *, timeout: float = STORE_TIMEOUT,
                   http_auth: HttpAuth | None = None) -> list[str]:
    """Why the store at ``url`` (spec field ``field``) cannot be used now; [] when it can."""
    shown = masked(url)
    head = f"{field}={shown!r}" if len(shown) <= 200 else f"{field}={shown[:200]!r}... ({len(shown):,} characters)"
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    deadline = time.monotonic() + timeout
    if scheme == "sqlite":
        problem = _sqlite_problem(url)
    elif scheme == "postgresql":
        problem = _postgres_problem(url, deadline)
    elif scheme in ("http", "https"):
        problem = _http_problem(url, deadline, http_auth or HttpAuth())
    else:  # mysql, file, databricks: left to MLflow, which names its own errors
        problem = None
    if problem is None:
        return []
    return [f"{head}: {_without_password(problem, url)}"]


def _without_password(text: str, url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:  # noqa: BLE001
        password = None
    return text.replace(str(password), "***") if password else text


# -- SQLite ------------------------------------------------------------------------------------

def _sqlite_problem(url: str) -> str | None:
    name = url.removeprefix("sqlite:///").split("?", 1)[0]
    if name in ("", ":memory:"):
        return None
    path = Path(name)
    if path.exists():
        if not path.is_file():
            return f"{path} is a folder, not a SQLite file"
        try:
            with path.open("rb") as f:
                start = f.read(16)
        except OSError as exc:
            return f"cannot read {path} ({exc.strerror or exc})"
        if start and start != b"SQLite format 3\x00":
            return f"{path} is not a SQLite database"
        if not os.access(path, os.W_OK):
            return f"{path} is read-only"
        return None
    existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        return f"cannot create {path}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create {path}: {existing} is not writable"
    return None


# -- PostgreSQL --------------------------------------------------------------------------------

def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


def _postgres_problem(url: str, deadline: float) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - sqlalchemy.exc.ArgumentError and ValueError (bad port)
        return f"not a valid database URL ({type(exc).__name__})"
    if parsed.host:  # a unix-socket URL (host in the query) goes straight to libpq
        problem = _speaks_postgres(parsed.host, parsed.port or 5432, deadline)
        if problem:
            return problem
    return _login_problem(url, deadline)


def _speaks_postgres(host: str, port: int, deadline: float) -> str | None:
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=_left(deadline)) as s:
            s.sendall(SSL_REQUEST)
            s.settimeout(min(PG_REPLY_WAIT, _left(deadline)))
            try:
                reply = s.recv(64)
            except TimeoutError:
                # not PostgreSQL, or a slow one: end the line, so an HTTP server answers its 400 now
                # (a PostgreSQL server has its one-byte answer queued before it reads these bytes)
                s.sendall(b"\r\n\r\n")
                s.settimeout(_left(deadline))
                reply = s.recv(64)
    except socket.gaierror:
        return f"cannot resolve host {host!r}"
    except ConnectionRefusedError:
        return f"nothing listens on {where} (connection refused): is PostgreSQL running there?"
    except TimeoutError:
        return f"no answer from {where} within the timeout: host down, or a firewall drops the connection"
    except OSError as exc:
        return f"cannot connect to {where} ({exc.strerror or exc})"
    if reply[:1] in (b"S", b"N", b"E"):
        return None
    if not reply:
        return f"{where} closed the connection without a PostgreSQL answer: not a PostgreSQL server"
    return f"{where} is not a PostgreSQL server (it answered {reply[:24]!r}; an HTTP server or another service?)"


def _login_problem(url: str, deadline: float) -> str | None:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"connect_timeout": max(2, int(_left(deadline)))})
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()
    except ImportError as exc:
        return f"no PostgreSQL driver ({exc}); install kdsweep[postgres]"
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = _pg_reason(str(getattr(exc, "orig", None) or exc))
        if "does not exist" in reason and "database" in reason:
            return f"{reason} (create it first, e.g. CREATE DATABASE; kdsweep never creates databases)"
        return f"PostgreSQL refused the connection: {reason}"
    return None


def _pg_reason(text: str) -> str:
    """libpq's message without its 'connection to server at ... failed:' preamble, one line."""
    text = re.sub(r"^connection failed:\s*", "", text.strip())
    text = re.sub(r'connection to server at "[^"]*"(?: \([^)]*\))?, port \d+ failed:\s*', "", text)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "unknown error")
    return re.sub(r"\s+", " ", line.replace("FATAL:", "")).strip()[:300]


# -- MLflow over HTTP --------------------------------------------------------------------------

class _NoAnswer(Exception):
    pass


def _get(url: str, deadline: float, headers: dict[str, str], context: ssl.SSLContext | None) -> int:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=_left(deadline), context=context) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise _NoAnswer("no answer within the timeout") from None
        raise _NoAnswer(str(getattr(reason, "strerror", None) or reason)) from None
    except TimeoutError:
        raise _NoAnswer("no answer within the timeout") from None
    except (http.client.HTTPException, ConnectionError) as exc:
        raise _NoAnswer(f"it does not answer as an HTTP server: {type(exc).__name__}") from None
    except OSError as exc:
        raise _NoAnswer(str(exc.strerror or exc)) from None


def _http_problem(url: str, deadline: float, auth: HttpAuth) -> str | None:
    base = url.rstrip("/")
    context = auth.ssl_context() if base.startswith("https://") else None
    try:
        for path, headers in (("/health", {}), (API_PROBE, auth.headers())):
            code = _get(base + path, deadline, headers, context)
            if code != 200:
                return _refusal(code, path.split("?")[0], bool(auth.headers()))
    except _NoAnswer as exc:
        return f"MLflow server not reachable ({exc})"
    return None


def _refusal(code: int, path: str, logged_in: bool) -> str:
    if code == 401:
        given = "the login given was refused" if logged_in else "the server needs a login"
        return (f"401 Unauthorized on {path}: {given} (MLflow's client sends MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)")
    if code == 403:
        return (f"403 Forbidden on {path}: the server's --allowed-hosts does not list the host in this URI, "
                "or this user may not read experiments")
    return f"the server answered {code} on {path}: not an MLflow tracking server?"


# -- sharing -----------------------------------------------------------------------------------

def shared_store_problem(field: str, url: str) -> str | None:
    """Why ``url`` cannot be shared by several workers, or None when it can (the password masked)."""
    scheme, shown = url_scheme(url), masked(url)
    if field == "storage" and scheme != "postgresql":
        return (f"storage={shown!r}: workers share a study through PostgreSQL; SQLite takes one writer "
                "at a time. Pass --storage postgresql://USER:PASSWORD@HOST:5432/optuna")
    if field == "tracking_uri" and scheme not in ("http", "https"):
        return (f"tracking_uri={shown!r}: workers log through an MLflow server (kdsweep server start "
                "--backend-store-uri postgresql://.../mlflow). Pass --tracking-uri http://HOST:5000")
    return None
