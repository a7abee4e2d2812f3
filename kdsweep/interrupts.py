"""Ctrl-C and SIGTERM held back while a database call runs, so that they never land inside one.

A study stops on Ctrl-C or SIGTERM by a KeyboardInterrupt, raised wherever the main thread is.
Raised in the middle of a SQLAlchemy flush (MLflow's or Optuna's store), it can leave the
interrupted connection holding SQLite's write lock, and the study's next write, the one that
marks the run it stopped, then fails with "database is locked". Inside :func:`held` the signal
is noted and re-sent as soon as the call ends; a second one while held is not held (someone
pressing Ctrl-C again means now, even on a slow server).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Callable, Iterator, TypeVar

SIGNALS = (signal.SIGINT, signal.SIGTERM)
F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (where Python handles them) until the block ends, then re-send them."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are handled in the main thread: a call in another thread is never interrupted
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    previous = {s: h for s, h in previous.items() if callable(h)}  # not SIG_IGN, SIG_DFL, or a C handler
    caught: list[int] = []

    def note(signum, frame) -> None:
        if caught:  # the second time: give the signal to its own handler now
            caught.clear()
            restore()
            previous[signum](signum, frame)
        caught.append(signum)

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    for s in previous:
        signal.signal(s, note)
    try:
        yield
    finally:
        restore()
        if caught:
            signal.raise_signal(caught[0])


def holding(fn: F) -> F:
    """``fn`` with Ctrl-C and SIGTERM held while it runs (see :func:`held`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with held():
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
