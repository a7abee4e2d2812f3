"""Optuna's RDB storage, configured for long sweeps and several workers.

- ``pool_pre_ping``: PostgreSQL and proxies drop idle connections (about an hour); without it
  the next trial after a long one fails on a dead connection.
- heartbeat + retry: a worker that dies mid-trial stops beating; another worker (or a rerun)
  marks its trial FAIL and enqueues a copy with the same parameters.
- Ctrl-C and SIGTERM wait until a storage call ends (``HeldRDBStorage``), so none can leave
  a SQLite lock held by an interrupted transaction.
"""

from __future__ import annotations


import optuna
import warnings

from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from kdsweep.interrupts import holding
from kdsweep.stores import sqlite_file

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30


def _holding_every_call(cls: type[RDBStorage]) -> type[RDBStorage]:
    # every storage call, reads too: an interrupted read can keep a lock that blocks writers
    for name, fn in vars(BaseStorage).items():
        if callable(fn) and not name.startswith("_"):
            setattr(cls, name, holding(getattr(RDBStorage, name)))
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
