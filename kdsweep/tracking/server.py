"""A real ``mlflow server``: backend store from a URL, artifacts served by the server itself.

``kdsweep server start`` is a thin, checked front to MLflow's own server: it refuses what would
go wrong later (a busy port, MLflow's file store, a SQLite file that a study is writing to),
starts ``python -m mlflow server`` in its own process group, waits until ``/health`` answers
and prints the URL. Studies then log with ``--tracking-uri http://HOST:PORT``; artifacts go
through the server (``--serve-artifacts``), so workers on other machines need no shared disk.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kdsweep.errors import TrackingError
from kdsweep.stores import DEFAULT_ARTIFACTS, DEFAULT_TRACKING_URI, single_writer, sqlite_file, url_scheme

DEFAULT_BACKEND = DEFAULT_TRACKING_URI  # the server's backend store is what the CLI logs to by default
DEFAULT_LOG = "mlruns/mlflow-server.log"
BACKEND_SCHEMES = ("sqlite", "postgresql", "mysql")


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"  # loopback unless asked: the UI has no login without --app-name basic-auth
    port: int = 5000
    backend_store_uri: str = DEFAULT_BACKEND
    artifacts_destination: str = DEFAULT_ARTIFACTS  # a folder, or a URI such as s3://bucket/path
    workers: int = 2  # uvicorn processes
    allowed_hosts: str | None = None  # Host headers the server accepts (MLflow's default: local + private)
    log_file: Path = Path(DEFAULT_LOG)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        # a server bound to every interface is still reached on loopback from here
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def artifacts_uri(destination: str) -> str:
    """A local folder becomes an absolute path (created); other URIs pass through."""
    if "://" in destination:
        return destination
    path = Path(destination).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def check_backend(uri: str) -> None:
    scheme = url_scheme(uri)
    if scheme not in BACKEND_SCHEMES or "://" not in uri:
        raise TrackingError(f"backend_store_uri={uri!r}: use a database, e.g. {DEFAULT_BACKEND} or "
                            "postgresql://USER:PASSWORD@HOST:5432/mlflow (MLflow's file store is not supported)")


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # as uvicorn binds: a port whose last server just stopped (TIME_WAIT) counts as free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise TrackingError(f"port={port}: cannot listen on {host}:{port} ({exc.strerror}); "
                                "pick another with --port") from None


def command(opts: ServerOptions) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--host", opts.host, "--port", str(opts.port),
           "--backend-store-uri", opts.backend_store_uri,
           "--serve-artifacts", "--artifacts-destination", artifacts_uri(opts.artifacts_destination),
           "--workers", str(opts.workers)]
    if opts.allowed_hosts:
        cmd += ["--allowed-hosts", opts.allowed_hosts]
    return cmd


def healthy(url: str, *, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def log_tail(path: Path, lines: int = 1) -> str:
    """The last meaningful lines of the server log (tracebacks end with the error itself)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    useful = [line.strip() for line in text if line.strip() and "Warning" not in line]
    return " | ".join(useful[-lines:]) or "empty log"


class MlflowServer:
    """A running ``mlflow server`` process group; ``stop()`` ends all of it."""

    def __init__(self, opts: ServerOptions, proc: subprocess.Popen, log: Path) -> None:
        self.opts, self.proc, self.log = opts, proc, log

    @property
    def url(self) -> str:
        return self.opts.url

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TrackingError(f"mlflow server exited ({self.proc.returncode}) before answering: "
                                    f"{log_tail(self.log)} (log: {self.log})")
            if healthy(self.url):
                return
            time.sleep(0.5)
        self.stop()
        raise TrackingError(f"mlflow server did not answer on {self.url}/health within {timeout:.0f}s "
                            f"(log: {self.log})")

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def launch(opts: ServerOptions, *, wait: float = 120.0) -> MlflowServer:
    """Start the server and return once ``/health`` answers (or raise TrackingError)."""
    check_backend(opts.backend_store_uri)
    check_port_free(opts.host, opts.port)
    path = sqlite_file(opts.backend_store_uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    cmd = command(opts)
    opts.log_file.parent.mkdir(parents=True, exist_ok=True)
    # MLflow's GenAI job runner starts a handful of queue consumers that kdsweep never uses
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **opts.extra_env}
    with open(opts.log_file, "ab") as log:
        # own session: stop() reaches MLflow's uvicorn workers too, and Ctrl-C in the terminal
        # reaches kdsweep, which stops the server in order
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = MlflowServer(opts, proc, opts.log_file)
    try:
        server.wait_healthy(wait)
    except BaseException:
        server.stop()
        raise
    return server


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve(opts: ServerOptions, *, announce=print) -> int:
    """Run the server in the foreground until it exits or this process is told to stop."""
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server as Ctrl-C does
    try:
        check_backend(opts.backend_store_uri)  # refuse before anything is made
        check_port_free(opts.host, opts.port)
        with single_writer(opts.backend_store_uri, field="backend_store_uri"):
            server = launch(opts)  # stops what it started if interrupted while waiting
            announce(f"MLflow UI: {server.url}  (log: {server.log}; Ctrl-C stops the server)")
            announce(f"log a study through it: kdsweep study run SPEC --tracking-uri {server.url}")
            try:
                return server.proc.wait()
            finally:
                server.stop()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
