"""Optuna's RDB storage, configured for long sweeps and several workers.

- ``pool_pre_ping``: PostgreSQL and proxies drop idle connections (about an hour); without it
  the next trial after a long one fails on a dead connection.
- heartbeat + retry: a worker that dies mid-trial stops beating; another worker (or a rerun)
  marks its trial FAIL and enqueues a copy with the same parameters.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import warnings

from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30


def sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def open_storage(url: str, *, heartbeat: int = HEARTBEAT_SECONDS, grace: int = GRACE_SECONDS) -> RDBStorage:
    path = sqlite_path(url)
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
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat,
            grace_period=grace,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
