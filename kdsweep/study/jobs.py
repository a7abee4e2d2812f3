"""``jobs: K``: K trials at once in one process, their trainings packed by a TrainingPool.

Each of K threads runs the ordinary trial loop (``coordination.run_trials``: claim, ask, train,
tell, heartbeats) on its own Optuna ``Study`` object, so samplers are not shared between
threads. Where a trial would train, it hands the training to the pool, which the calling
(main) thread serves: runs of one seed train together on the same batches with one teacher
forward per batch (``kdsweep.core.packing``). Ctrl-C and SIGTERM reach the main thread, inside
the pool; every waiting trial is then interrupted as a single trial would be.
"""

from __future__ import annotations

import threading
from typing import Callable

import optuna

from kdsweep.core.pool import TrainingPool


def run_packed(pool: TrainingPool, open_study: Callable[[], optuna.Study],
               run_trials: Callable[[optuna.Study], int]) -> int:
    """Run ``run_trials`` in ``pool.size`` threads while this thread trains for them; trials run in all.

    The first exception of any thread (a trial loop that stops the study, such as a lost
    tracking server) stops the others at their next training and is re-raised here.
    """
    errors: list[BaseException] = []
    ran: list[int] = []
    studies = [open_study() for _ in range(pool.size)]  # one sampler each, opened here: fail before threads

    def work(study: optuna.Study) -> None:
        with pool.client():
            try:
                ran.append(run_trials(study))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises
                errors.append(exc)
                pool.close(exc)

    threads = [threading.Thread(target=work, args=(s,), name=f"kdsweep-trials-{i}", daemon=True)
               for i, s in enumerate(studies)]
    for t in threads:
        t.start()
    try:
        pool.serve(lambda: not any(t.is_alive() for t in threads))
    finally:
        for t in threads:  # interrupted: each thread marks its trial and ends at its next pool call
            t.join()
    if errors:
        raise errors[0]
    return sum(ran)
