"""The confirmation stage: the search's best trials trained again on seeds the search never saw.

The best of N noisy trials beats its baseline even when distillation does nothing (the winner's
curse): its value was chosen by the very numbers it reports. So after the search, the top
``confirm.top_k`` trials *by validation* (their Optuna values), and their matched baselines
(same width, seed, epochs, recipe), are retrained on ``confirm.seeds``. The report's headline
numbers come from these runs (role ``confirm`` in MLflow, paired with role ``baseline`` runs of
the same seeds), so the selection and the reported number are independent.

Each run is obtained like a teacher or a baseline (``study.teacher.obtain``): a finished run is
reused, a killed one resumes from its last epoch, and with ``jobs > 1`` the runs of a seed train
packed in one loop. Workers on one study share the stage: each takes the (trial, seed) pairs no
other worker holds, then waits for the others' and reuses their runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from kdsweep.core.data import ImageSet
from kdsweep.core.summary import RunSummary
from kdsweep.core.teachers import TeacherSource
from kdsweep.errors import StudyError
from kdsweep.study import space
from kdsweep.study.coordination import Locks
from kdsweep.study.pool import TrainingPool
from kdsweep.study.recorder import Recorder
from kdsweep.study.spec import StudySpec
from kdsweep.study.tables import describe_source, feature_params
from kdsweep.study.teacher import Trained, obtain


def top_trials(study: optuna.Study, k: int, *, per_method: bool = False) -> list[optuna.trial.FrozenTrial]:
    """The ``k`` complete trials with the best value (validation), best first; ties keep the earlier
    trial. ``per_method``: the best ``k`` of each KD method, still in that order."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "values" in t.user_attrs]
    done.sort(key=lambda t: (-t.values[0], t.number))
    if not per_method:
        return done[:k]
    taken: dict[str, int] = {}
    chosen = []
    for t in done:
        method = t.user_attrs["values"].get("method", "kd")
        if taken.get(method, 0) < k:
            taken[method] = taken.get(method, 0) + 1
            chosen.append(t)
    return chosen


@dataclasses.dataclass
class Confirmation:
    trial: int
    seed: int
    run_id: str
    baseline_run_id: str


def confirm(spec: StudySpec, study: optuna.Study, data: ImageSet, *, source: TeacherSource, teacher: Trained,
            recorder: Recorder, workdir: Path, device: str, locks: Locks,
            pool: TrainingPool | None = None) -> list[Confirmation]:
    """Train (or reuse, or resume) every confirmation run of ``spec.confirm``; one entry per trial and seed.

    ``pool`` (``jobs > 1``): the runs are trained by it, from a thread per (trial, seed).
    """
    if spec.confirm is None:
        return []
    chosen = top_trials(study, spec.confirm.top_k, per_method=spec.confirm.per_method)
    if not chosen:
        raise StudyError(f"study {spec.name!r}: no complete trial to confirm yet; run the search first")
    kwargs: dict = dict(recorder=recorder, workdir=workdir, locks=locks)
    if pool is not None:  # a thread waiting for another's baseline is idle: the pool need not wait for it
        kwargs.update(locks=pool.locks(locks), train_fn=pool.train)
    elif spec.processes > 1:  # each run on that many data-parallel processes, as in the search
        from functools import partial

        from kdsweep.core.distributed import train_on

        kwargs.update(train_fn=partial(train_on, spec.processes))

    def unit(trial: optuna.trial.FrozenTrial, seed: int) -> Confirmation:
        values = trial.user_attrs["values"]
        base_cfg = space.baseline_config(spec, width=values["width"], seed=seed, device=device,
                                         arch=values.get("arch"))
        base = obtain("baseline", base_cfg, data, tags={"study": spec.name, "stage": "confirm"}, **kwargs)
        cfg = space.student_config(spec, values, seed=seed, device=device)
        params = {"trial": trial.number, "baseline_run_id": base.run_id, "teacher_run_id": teacher.run_id,
                  "teacher_logits": describe_source(source, cfg), "search_value": trial.values[0],
                  **feature_params(source, cfg, data)}
        tags = {"study": spec.name, "trial": str(trial.number), "seed": str(seed), "stage": "confirm"}

        def compared(summary: RunSummary) -> RunSummary:
            return summary.compared_with(base.summary, teacher.summary)

        run = obtain("confirm", cfg, data, tags=tags, teacher=source, params=params, finish=compared, **kwargs)
        return Confirmation(trial.number, seed, run.run_id, base.run_id)

    pairs = [(t, s) for s in spec.confirm.seeds for t in chosen]
    return share([(f"confirm:{spec.name}:{t.number}:{s}", lambda t=t, s=s: unit(t, s)) for t, s in pairs],
                 locks, pool)


def share(units: list[tuple[str, Callable[[], Confirmation]]], locks: Locks,
          pool: TrainingPool | None = None) -> list[Confirmation]:
    """Run named units split among the workers of a study; the results in ``units``' order.

    First each unit whose lock no other worker holds; then the others' units, whose runs this worker
    waits for (their own locks, in ``obtain``) and reuses, or trains if that worker died.
    """
    def mine(name: str, unit: Callable[[], Confirmation]) -> Callable[[], Confirmation | None]:
        def run() -> Confirmation | None:
            with locks.try_hold(name) as free:
                return unit() if free else None
        return run

    results = _run_all([mine(name, unit) for name, unit in units], pool)
    left = [i for i, done in enumerate(results) if done is None]
    for i, done in zip(left, _run_all([units[i][1] for i in left], pool)):
        results[i] = done
    return results


def _run_all(units: list[Callable[[], Confirmation | None]], pool: TrainingPool | None) -> list:
    if pool is None:
        return [u() for u in units]
    results = pool.run(units)  # threads hand their trainings to the pool: the runs of a seed pack
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    return results
