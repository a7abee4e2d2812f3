"""``jobs: K``: K trials at once in one process, their trainings packed by a TrainingPool.

Each of K threads runs the ordinary trial loop (``coordination.run_trials``: claim, ask, train,
tell, heartbeats) on its own Optuna ``Study`` object, so samplers are not shared between
threads. Where a trial would train, it hands the training to the pool, which the calling
(main) thread serves: runs of one seed train together on the same batches with one teacher
forward per batch (``kdsweep.core.packing``). Ctrl-C and SIGTERM reach the main thread, inside
the pool; every waiting trial is then interrupted as a single trial would be.
"""

from __future__ import annotations

from typing import Callable

import optuna

from kdsweep.study.pool import TrainingPool


def run_packed(pool: TrainingPool, open_study: Callable[[], optuna.Study],
               run_trials: Callable[[optuna.Study], int]) -> int:
    """Run ``run_trials`` in ``pool.size`` threads while this thread trains for them; trials run in all.

    The first exception of any thread (a trial loop that stops the study, such as a lost
    tracking server) stops the others at their next training and is re-raised here.
    """
    studies = [open_study() for _ in range(pool.size)]  # one sampler each, opened here: fail before threads
    results = pool.run([lambda s=s: run_trials(s) for s in studies])
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return sum(results)  # type: ignore[arg-type]
