"""Optuna's RDB storage, configured for long sweeps and several workers.

- ``pool_pre_ping``: PostgreSQL and proxies drop idle connections (about an hour); without it
  the next trial after a long one fails on a dead connection.
- heartbeat + retry: a worker that dies mid-trial stops beating; another worker (or a rerun)
  marks its trial FAIL and enqueues a copy with the same parameters.
- Ctrl-C and SIGTERM wait until a storage call ends (``HeldRDBStorage``), so none can leave
  a SQLite lock held by an interrupted transaction.
- PostgreSQL restarted or briefly down: a call whose connection was lost is run again on a new
  connection, for up to ``RECONNECT_SECONDS``; a call that adds a row (a new trial or study) only
  when the connection failed before anything was sent. Past that, ``StorageLostError``: the
  study stops with the resume line.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
import time

import optuna
import sqlalchemy
import warnings

from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from kdsweep.errors import StorageLostError
from kdsweep.interrupts import holding
from kdsweep.stores import sqlite_file

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
RECONNECT_SECONDS = 60  # a PostgreSQL restart takes a few seconds; a failover up to a minute
# calls that insert a row: run again only when the lost connection never carried the statement
ADDS_ROWS = ("create_new_trial", "create_new_study")
NEVER_SENT = ("Connection refused", "the database system is starting up", "the database system is shutting down",
              "the database system is in recovery mode", "the database system is not yet accepting connections")
LOST = NEVER_SENT + ("server closed the connection unexpectedly", "terminating connection due to administrator",
                     "connection already closed", "closed the connection", "could not receive data from server",
                     "could not send data to server", "SSL connection has been closed unexpectedly")
_retrying = threading.local()  # a storage call made inside another one is retried by the outer one only


def lost_connection(exc: BaseException) -> BaseException | None:
    """The SQLAlchemy error behind ``exc`` when it says the database connection was lost (not a
    wrong password or an unknown host, which waiting does not mend), else None."""
    seen = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and (
                seen.connection_invalidated or any(s in str(seen) for s in LOST)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _mask(url: str) -> str:
    return re.sub(r"(://[^/:@\s]+):[^@\s]+@", r"\1:***@", url)


def reconnecting(name: str, fn):
    """``fn`` (an RDBStorage method) run again on a new connection while the database is away.

    Only once the storage has answered before: a database that is down when the study starts is
    reported at once, not waited for.
    """
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if getattr(_retrying, "on", False) or self.url.startswith("sqlite"):
            return fn(self, *args, **kwargs)
        _retrying.on, deadline, said = True, None, False
        try:
            while True:
                try:
                    result = fn(self, *args, **kwargs)
                    self._kdsweep_answered = True
                    return result
                except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as exc:
                    cause = lost_connection(exc)
                    if cause is None or not getattr(self, "_kdsweep_answered", False):
                        raise
                    first = str(cause).strip().splitlines()[0][:300]
                    if name in ADDS_ROWS and not any(s in str(cause) for s in NEVER_SENT):
                        # the row may have been written before the connection went: not run again
                        raise StorageLostError(f"storage={_mask(self.url)!r}: PostgreSQL connection lost during "
                                               f"{name} ({first})") from exc
                    deadline = deadline or time.monotonic() + RECONNECT_SECONDS
                    if time.monotonic() >= deadline or getattr(self, "_kdsweep_gave_up", False):
                        self._kdsweep_gave_up = True  # the calls after this one (closing the trial) do not wait
                        raise StorageLostError(f"storage={_mask(self.url)!r}: PostgreSQL not reachable for "
                                               f"{RECONNECT_SECONDS} s ({first})") from exc
                    if not said:
                        said = True
                        print(f"storage {_mask(self.url)}: connection lost ({first}); reconnecting for up to "
                              f"{RECONNECT_SECONDS} s", file=sys.stderr, flush=True)
                    time.sleep(1.0)
        finally:
            _retrying.on = False
    return wrapper


def _holding_every_call(cls: type[RDBStorage]) -> type[RDBStorage]:
    # every storage call, reads too: an interrupted read can keep a lock that blocks writers.
    # Each attempt is held on its own; the pause between reconnect attempts is not.
    for name, fn in vars(BaseStorage).items():
        if callable(fn) and not name.startswith("_"):
            setattr(cls, name, reconnecting(name, holding(getattr(RDBStorage, name))))
    # the heartbeat (BaseHeartbeat, not BaseStorage): a beat lost to a restart would end the heartbeat
    # thread, and the other workers would fail a trial that is still training
    for name in ("record_heartbeat", "_get_stale_trial_ids"):
        setattr(cls, name, reconnecting(name, holding(getattr(RDBStorage, name))))
    return cls


@_holding_every_call
class HeldRDBStorage(RDBStorage):
    """RDBStorage whose calls hold Ctrl-C and SIGTERM until they end (see kdsweep.interrupts).

    An interrupt inside one of its SQLite transactions could leave the lock held, and the
    study's next write (marking the stopped trial interrupted) would fail.
    """


def open_storage(url: str, *, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS) -> RDBStorage:
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"pool_pre_ping": True}
    if path is not None:
        # SQLite: wait for a lock instead of failing at once when another process writes
        engine_kwargs["connect_args"] = {"timeout": 60}
    with warnings.catch_warnings():
        # heartbeats are marked experimental in Optuna, but they are the supported way to
        # detect dead workers; the warning says nothing the user can act on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return HeldRDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=grace,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
