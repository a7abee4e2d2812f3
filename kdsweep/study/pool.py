"""TrainingPool: trials in threads hand their trainings to one loop, which packs them.

A study with ``jobs: K`` runs K trials at once as threads (:meth:`TrainingPool.run`). Each
thread does its trial's light work (Optuna, tracking) and calls :meth:`TrainingPool.train`
where it would call :func:`kdsweep.core.trainer.train`; that call blocks. One serving thread
(the main one, so Ctrl-C lands there) gathers the waiting requests, packs up to K that can share batches
(:func:`kdsweep.core.packing.pack_key`) and trains them with
:func:`kdsweep.core.packing.train_group`, then hands each thread its result or its exception.
Only the serving thread trains, and results come back with their weights on the CPU, so the
device is never used by two threads at once.

A group starts when K compatible requests wait, when every live client thread is either waiting
here or blocked elsewhere (on a lock, or polling: :meth:`TrainingPool.idle`), so no more can come
soon, or ``gather_seconds`` after the last request arrived. A client doing a trial's light work
(an MLflow run opened, a baseline looked up) is waited for, so trials line up even where that
work takes seconds (an MLflow server over the network, a busy machine); one blocked on another
client's baseline is not, since it cannot train before that baseline has.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from kdsweep.core.config import TrainConfig
from kdsweep.core.data import ImageSet
from kdsweep.core.packing import can_pack, pack_key, train_group
from kdsweep.core.teachers import TeacherSource
from kdsweep.core.trainer import EpochMetrics, RunRequest, TrainResult
from kdsweep.study.coordination import Locks


@dataclass
class _Pending:
    req: RunRequest
    data: ImageSet
    key: tuple | None
    future: Future
    arrived: float


class TrainingPool:
    """Packs the trainings that up to ``size`` client threads ask for; see the module docstring."""

    def __init__(self, size: int, *, gather_seconds: float = 10.0) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self.size, self.gather_seconds = size, gather_seconds
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._clients = 0  # live client threads (see run())
        self._idle = 0  # of those, blocked outside the pool (see idle())
        self._closed: BaseException | None = None
        self.groups: list[int] = []  # size of every group trained, for logs and tests

    def run(self, jobs: list[Callable[[], object]]) -> list[object]:
        """Run each job in a thread of its own while this thread trains for them (:meth:`serve`).

        Returns each job's return value, or the exception it ended with. The first job that
        raises closes the pool (:meth:`close`): the others are stopped at their next training.
        A KeyboardInterrupt here (Ctrl-C, SIGTERM) stops every job the same way and is re-raised
        once they have all ended.
        """
        out: list[object] = [None] * len(jobs)
        with self._cond:
            self._clients += len(jobs)  # counted before any starts, so no group forms too early

        def work(i: int, job: Callable[[], object]) -> None:
            try:
                out[i] = job()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                out[i] = exc
                self.close(exc)
            finally:
                with self._cond:
                    self._clients -= 1
                    self._cond.notify_all()

        threads = [threading.Thread(target=work, args=(i, job), name=f"kdsweep-pool-{i}", daemon=True)
                   for i, job in enumerate(jobs)]
        for t in threads:
            t.start()
        try:
            self.serve()
        finally:
            for t in threads:
                t.join()
        return out

    def train(self, cfg: TrainConfig, data: ImageSet, *, teacher: TeacherSource | None = None,
              on_epoch: Callable[[EpochMetrics], None] | None = None, checkpoint_path: Path | None = None,
              model: nn.Module | None = None, accel: str = "auto", co_teacher: RunRequest | None = None) -> TrainResult:
        """:func:`kdsweep.core.trainer.train`, run by the serving thread; blocks until this run ends."""
        req = RunRequest(cfg, teacher, on_epoch, checkpoint_path, model, accel, co_teacher)
        future: Future = Future()
        with self._cond:
            if self._closed is not None:
                raise KeyboardInterrupt("the study is stopping") from self._closed
            self._pending.append(_Pending(req, data, pack_key(req, data), future, time.monotonic()))
            self._cond.notify_all()
        return future.result()  # re-raises the run's exception in this thread

    def serve(self) -> None:
        """Train groups until no client is left and nothing waits; call from the main thread.

        On KeyboardInterrupt (Ctrl-C, SIGTERM) every waiting and running request gets it too,
        later requests are refused, and it is re-raised here.
        """
        group: list[_Pending] = []
        try:
            while True:
                group = self._next_group() or []
                if not group:
                    return
                self.groups.append(len(group))
                outcomes = train_group([p.req for p in group], group[0].data)
                for p, out in zip(group, outcomes):
                    if isinstance(out, BaseException):
                        p.future.set_exception(out)
                    else:
                        p.future.set_result(_on_host(out))
        except BaseException as exc:
            self._close(exc, group)
            raise

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Mark the calling client as blocked on something other than its next training (a lock
        another client holds, a poll): groups then form without waiting for it."""
        with self._cond:
            self._idle += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._idle -= 1

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` for a client that polls: idle meanwhile."""
        with self.idle():
            time.sleep(seconds)

    def locks(self, inner: Locks) -> Locks:
        """``inner``, with the clients that wait for one of its locks counted idle while they wait."""
        return _IdleWhileWaiting(inner, self)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def close(self, exc: BaseException) -> None:
        """Stop: waiting requests and later ones get KeyboardInterrupt; ``serve`` returns after the running group."""
        self._close(exc, [])

    def _close(self, exc: BaseException, running: list[_Pending]) -> None:
        with self._cond:
            if self._closed is None:
                self._closed = exc
            waiting, self._pending = self._pending, []
            self._cond.notify_all()
        for p in running + waiting:
            if not p.future.done():
                stop = KeyboardInterrupt("the study is stopping")
                stop.__cause__ = exc
                p.future.set_exception(stop)

    def _next_group(self) -> list[_Pending] | None:
        with self._cond:
            while True:
                if self._closed is not None:
                    return None
                if self._pending:
                    head = self._pending[0]
                    group = [head]
                    for p in self._pending[1:]:
                        if len(group) < self.size and can_pack([g.key for g in group] + [p.key]):
                            group.append(p)
                    newest = max(p.arrived for p in self._pending)
                    everyone_waits = len(self._pending) + self._idle >= self._clients
                    if (len(group) >= self.size or everyone_waits or head.key is None
                            or time.monotonic() - newest >= self.gather_seconds):
                        for p in group:
                            self._pending.remove(p)
                        return group
                    self._cond.wait(timeout=max(0.05, self.gather_seconds - (time.monotonic() - newest)))
                    continue
                if self._clients == 0:
                    return None
                self._cond.wait(timeout=0.5)


class _IdleWhileWaiting:
    """Locks whose blocking waits count the waiting client idle in its pool (``TrainingPool.locks``)."""

    def __init__(self, inner: Locks, pool: TrainingPool) -> None:
        self.inner, self.pool = inner, pool

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        with contextlib.ExitStack() as held:
            with self.pool.idle():
                held.enter_context(self.inner.hold(name))
            yield

    def try_hold(self, name: str) -> contextlib.AbstractContextManager[bool]:
        return self.inner.try_hold(name)  # never waits for another client


def _on_host(result: TrainResult) -> TrainResult:
    """Hand results back with their weights on the CPU: client threads then never touch the GPU
    (work from another thread can break the serving thread's CUDA graph capture)."""
    result.model.cpu()
    if result.ema_model is not None:
        result.ema_model.cpu()
    if result.co_teacher is not None:
        _on_host(result.co_teacher)
    return result
