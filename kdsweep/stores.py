"""Where a study keeps its data: the default store URLs, and the URL and SQLite-file helpers every layer uses.

Bottom-level (it imports nothing of kdsweep but its errors), so the spec, the coordination, the
MLflow logger, the server and the CLI read URLs the same way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from kdsweep.errors import StudyError

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"  # Optuna
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"  # MLflow
DEFAULT_ARTIFACTS = "mlruns/artifacts"  # MLflow artifacts of local stores (and of `kdsweep server start`)


def url_scheme(url: str) -> str:
    """``postgresql+psycopg2://...`` -> ``postgresql``; no scheme -> ``''``."""
    head, sep, _ = url.partition(":")
    return head.split("+", 1)[0].lower() if sep else ""


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (relative to the working directory); None for other URLs."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    user, at, host = netloc.rpartition("@")
    if not at or ":" not in user:
        return url
    return f"{scheme}://{user.split(':', 1)[0]}:***@{host}{slash}{path}"


# fds of the single-writer locks this process holds. A forked child (a DataLoader worker of the
# stream loader) shares the open file, and with it the flock: if the trainer is killed, a worker
# alive a few seconds longer would keep the database locked against the rerun. The child closes
# its copies at once; the parent's lock is unaffected (flock holds while any copy is open).
_HELD: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


@contextlib.contextmanager
def single_writer(url: str, *, field: str) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite file for as long as this process writes to it.

    ``flock`` is separate from SQLite's own byte-range locks, so it never blocks SQLite itself;
    it only stops a second kdsweep process, which would otherwise wait on "database is locked"
    and lose heartbeats. Other URLs pass through.
    """
    path = sqlite_file(url)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; SQLite's own locking still applies
        fcntl = None
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(
                f"{field}={url!r}: another kdsweep process is writing to {path}; SQLite takes one writer "
                "at a time. To run several workers use PostgreSQL: kdsweep study worker SPEC "
                "--storage postgresql://... --tracking-uri http://...") from None
        _HELD.add(handle.fileno())
        try:
            yield
        finally:
            _HELD.discard(handle.fileno())
            fcntl.flock(handle, fcntl.LOCK_UN)


# What kdsweep runs on, by the flag or field that names a store. Anything else (MLflow's file store,
# mysql, databricks, a typo) used to reach MLflow or SQLAlchemy and come back as a traceback after
# a store had been made; now it is one line before anything is created.
SUPPORTED = {
    "storage": ("sqlite", "postgresql"),  # Optuna
    "tracking_uri": ("sqlite", "postgresql", "http", "https"),  # MLflow: a database, or a server
    "backend_store_uri": ("sqlite", "postgresql"),  # `kdsweep server start`'s database
}
FORMS = {"sqlite": "sqlite:///PATH", "postgresql": "postgresql://USER:PASSWORD@HOST:PORT/DB",
         "http": "http(s)://HOST:PORT (an MLflow server)"}


def supported_forms(field: str) -> str:
    """``sqlite:///PATH, postgresql://...`` for the stores ``field`` takes."""
    return ", ".join(dict.fromkeys(FORMS[s if s != "https" else "http"] for s in SUPPORTED[field]))


def url_problem(field: str, url: str) -> str | None:
    """Why ``url`` cannot be the store ``field`` names (a key of SUPPORTED), or None; from the text alone.

    The scheme is one kdsweep supports and the URL parses (a host where one is needed, a port in
    range, no control characters); whether the store answers is ``study.probes``'s job.
    """
    from urllib.parse import urlsplit

    scheme = url_scheme(url)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "contains a space or a control character"
    if scheme not in SUPPORTED[field]:
        why = f"{scheme}:// is not supported" if scheme and url[len(scheme):].startswith(("://", "+")) else "not a URL"
        return f"must start with one of {supported_forms(field)} ({why})"
    if any("\udc80" <= c <= "\udcff" for c in url):  # a byte that is not UTF-8, as the shell passed it
        return "is not UTF-8 text"
    if scheme != "sqlite" and not url.isascii():  # http.client and libpq send ASCII only
        return "contains characters that are not ASCII: percent-encode them (e.g. %C3%A9 for é)"
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or not url.removeprefix("sqlite:///").split("?", 1)[0]:
            return "must be sqlite:///PATH (a relative path) or sqlite:////PATH (an absolute one)"
        return None
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError when not a number or out of range
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if not url.lower().startswith(f"{parts.scheme}://"):
        return f"must start with one of {supported_forms(field)} (not a URL)"
    if scheme in ("http", "https") and not parts.hostname:
        return "names no host: use http(s)://HOST:PORT"
    if port == 0:
        return "names port 0, which no server listens on"
    return None
