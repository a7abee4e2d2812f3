"""Several workers on one study: locks in the study's own database, and a trial loop that counts.

Workers (processes on one or many machines) share one Optuna study in PostgreSQL. They agree
through the database they already share, with nothing home-made on the side:

- ``Locks``: PostgreSQL advisory locks, held on a connection of Optuna's own engine. A worker
  that dies loses its connection, and PostgreSQL drops its locks with it. The teacher and every
  baseline are trained under a lock named after their config fingerprint, so the first worker
  trains and the others wait and then reuse its run.
- ``run_trials``: before each new trial a worker takes the study's claim lock, fails trials whose
  heartbeat stopped (Optuna then enqueues a retry) and trials whose process died before its
  first heartbeat (``fail_unclaimed``), counts finished and running trials, and
  asks for a new trial only while the study holds fewer than ``n_trials``. So N workers finish
  exactly ``n_trials`` trials between them.
- SQLite takes one writer at a time: ``single_writer`` refuses a second kdsweep process on the
  same SQLite file and names PostgreSQL as the way to run several.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Protocol

import optuna
import sqlalchemy
from optuna.trial import TrialState

from kdsweep.errors import StorageLostError, StudyError, TrialTakenOver
from kdsweep.stores import url_scheme
from kdsweep.study import recovery
from kdsweep.study.probes import shared_store_problem  # noqa: F401  (there, so launch reads it without torch)

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
log = logging.getLogger(__name__)


class Locks(Protocol):
    """Named mutual exclusion between the workers of a study."""

    def hold(self, name: str) -> contextlib.AbstractContextManager[None]: ...

    def try_hold(self, name: str) -> contextlib.AbstractContextManager[bool]:
        """Take the lock if it is free: yields True (held until the block ends) or False (someone has it)."""
        ...


class ProcessLocks:
    """Named locks between the threads of one process: SQLite studies (one writer process), ``jobs > 1``."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def _lock(self, name: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(name, threading.RLock())

    def hold(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self._lock(name)

    @contextlib.contextmanager
    def try_hold(self, name: str) -> Iterator[bool]:
        lock = self._lock(name)
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()


def lock_key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``, stable across machines and Python runs."""
    digest = hashlib.sha256(f"kdsweep:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLocks:
    """Session-level advisory locks, each on its own connection to the study's database.

    Connections are not pooled: closing one ends the session, and with it any lock it still
    holds. The connection commits right after locking, so a long hold (a teacher training for
    hours) is an idle session, not an idle transaction that a server timeout would cut.
    """

    def __init__(self, url: str) -> None:
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self.answered = False  # a database down from the start is reported, not waited for

    def _locked(self, key: int, *, wait: bool = True) -> tuple[sqlalchemy.Connection, bool]:
        """A connection and whether it holds the lock (always, when ``wait``); PostgreSQL
        restarting (a lost or refused connection) is waited out as storage calls wait it out
        (``storage.reconnecting``)."""
        from kdsweep.study.storage import RECONNECT_SECONDS, lost_connection

        deadline = time.monotonic() + RECONNECT_SECONDS
        query = "SELECT pg_advisory_lock(:k)" if wait else "SELECT pg_try_advisory_lock(:k)"
        while True:
            conn = None
            try:
                conn = self.engine.connect()
                got = conn.execute(sqlalchemy.text(query), {"k": key}).scalar()
                conn.commit()
                self.answered = True
                return conn, wait or bool(got)
            except sqlalchemy.exc.SQLAlchemyError as exc:
                if conn is not None:
                    conn.close()
                if lost_connection(exc) is None or not self.answered:
                    raise
                if time.monotonic() >= deadline:
                    raise StorageLostError(f"storage: PostgreSQL not reachable for {RECONNECT_SECONDS} s to take "
                                           f"a lock ({str(exc).strip().splitlines()[0][:300]})") from exc
                time.sleep(1.0)

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        with self.try_hold(name, wait=True):
            yield

    @contextlib.contextmanager
    def try_hold(self, name: str, *, wait: bool = False) -> Iterator[bool]:
        key = lock_key(name)
        conn, got = self._locked(key, wait=wait)
        with conn:
            try:
                yield got
            finally:
                if got:
                    try:
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
                    except sqlalchemy.exc.DBAPIError:
                        pass  # the connection is gone, and PostgreSQL released the lock with it


def locks_for(url: str) -> Locks:
    scheme = url_scheme(url)
    if scheme == "postgresql":
        return PostgresLocks(url)
    if scheme == "sqlite":
        return ProcessLocks()
    raise StudyError(f"storage={url!r}: kdsweep runs studies on sqlite:/// (one process) "
                     f"or postgresql:// (several workers), not {scheme}")


def count(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials; the storage re-reads unfinished trials on every call."""
    trials = study.get_trials(deepcopy=False)
    return (sum(t.state in DONE for t in trials), sum(t.state == TrialState.RUNNING for t in trials))


def fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def fail_unclaimed(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials that have no ``worker`` attribute; call it holding the claim lock.

    A trial's process holds the claim lock from before ``ask()`` until it sets ``worker`` (first
    line of the objective), and Optuna's heartbeat thread records its first beat in that same
    window. So a RUNNING trial without ``worker``, seen under the lock, belongs to a process that
    died in between: it has no heartbeat either, and nothing else would ever fail it. A trial
    that already had parameters (a queued retry) is queued again; one without did no work.
    Returns the numbers of the trials failed.
    """
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" in trial.user_attrs:
            continue
        storage = study._storage
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason",
                                        f"its process died as trial {trial.number} started")
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        if trial.params:
            recovery.retry(study, trial)
    return failed


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], *, n_trials: int,
               locks: Locks, make_sampler: Callable[[int], optuna.samplers.BaseSampler],
               timeout: float | None = None, poll: float = 2.0,
               catch: tuple[type[Exception], ...] = (Exception,),
               stop: Callable[[], bool] = lambda: False,
               sleep: Callable[[float], None] = time.sleep) -> int:
    """Run trials until the study holds ``n_trials`` finished ones; return how many this process ran.

    Each process starts at most as many trials as were missing when it began, so a trial that
    keeps failing cannot loop forever. While the last trials run elsewhere, it waits and keeps
    checking heartbeats, so a worker that died is noticed and its trial retried here.
    ``stop()`` true ends the loop before the next trial (another thread of this process stopped);
    ``sleep`` waits between looks (a ``TrainingPool``'s, which counts the thread idle meanwhile).
    """
    started = time.monotonic()
    budget = n_trials - count(study)[0]
    ran = 0
    while ran < budget:
        if stop() or (timeout is not None and time.monotonic() - started >= timeout):
            break
        claim = ClaimedObjective(objective, locks.hold(f"claim:{study.study_name}"))
        with claim:
            fail_stale(study)
            fail_unclaimed(study)
            recovery.retry_interrupted(study)  # a requeued worker's trial: run by whoever goes on
            finished, running = count(study)
            if finished >= n_trials:
                break
            if finished + running < n_trials:
                # reseeded per trial from the trial count: workers draw different values, and a
                # resumed study does not replay earlier draws
                study.sampler = make_sampler(len(study.get_trials(deepcopy=False)))
                # Optuna's optimize() runs the heartbeat thread; the claim is let go as soon as
                # the trial exists (first line of the objective)
                try:
                    study.optimize(claim, n_trials=1, catch=catch)
                except (ValueError, AssertionError, optuna.exceptions.UpdateFinishedTrialError):
                    # Optuna's tell refuses a trial that is no longer RUNNING (ValueError; an
                    # AssertionError in optimize when that happened after the objective's last
                    # check): another worker failed it as stale while this one was starved of CPU,
                    # and queued its retry
                    if not claim.taken_over(study):
                        raise
                    log.warning("trial %d was failed as stale by another worker (its heartbeats came "
                                "late); its result here is dropped and the trial is retried",
                                claim.trial_number)
                    continue  # not counted: the retry, here or elsewhere, is the trial's run
                ran += 1
                continue
        sleep(poll)
    return ran


class ClaimedObjective:
    """Holds the claim lock from before ``ask()`` until the new trial's objective starts."""

    def __init__(self, objective: Callable[[optuna.Trial], float],
                 lock: contextlib.AbstractContextManager[None]) -> None:
        self.objective, self.lock, self.held = objective, lock, False
        self.trial_id: int | None = None
        self.trial_number: int | None = None

    def __enter__(self) -> "ClaimedObjective":
        self.lock.__enter__()
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lock.__exit__(None, None, None)

    def __exit__(self, *exc) -> None:
        self.release()

    def taken_over(self, study: optuna.Study) -> bool:
        """True when this process's trial was finished by someone else (failed as stale)."""
        return self.trial_id is not None and study._storage.get_trial(self.trial_id).state.is_finished()

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial_id, self.trial_number = trial._trial_id, trial.number
        trial.set_user_attr("worker", recovery.owner())
        self.release()
        try:
            value = self.objective(trial)
        except optuna.exceptions.UpdateFinishedTrialError as exc:
            raise TrialTakenOver(f"trial {trial.number} was failed as stale by another worker") from exc
        if self.taken_over(trial.study):  # finished while the last epochs trained: tell would refuse it
            raise TrialTakenOver(f"trial {trial.number} was failed as stale by another worker")
        return value
