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
