"""run_study: open (or continue) the Optuna study, train the teacher once, then run trials.

Storage, sampler, pruner and heartbeat come from Optuna itself. Rerunning the same command
continues the study: finished trials are kept and only the missing ones are run.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from kdsweep.core.checkpoint import save_checkpoint
from kdsweep.core.data import ImageSet
from kdsweep.study.pool import TrainingPool
from kdsweep.core.trainer import resolve_device, train
from kdsweep.errors import StudyError
from kdsweep import stores
from kdsweep.study import coordination, jobs, recovery, space, tables
from kdsweep.core.split import hold_out
from kdsweep.study.confirm import Confirmation, confirm
from kdsweep.study.coordination import Locks, ProcessLocks
from kdsweep.study.objective import Objective, StopStudy
from kdsweep.study.recorder import Recorder, describe_data
from kdsweep.study.spec import StudySpec
from kdsweep.study.storage import HEARTBEAT_SECONDS, open_storage
from kdsweep.core.checkpoint import weights_payload
from kdsweep.study.teacher import Trained, from_checkpoint, obtain

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class StudyOutcome:
    study_name: str
    complete: int
    pruned: int
    failed: int
    best_value: float | None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_trial: int | None = None
    teacher_acc: float | None = None
    packed: list[int] = field(default_factory=list)  # jobs > 1: how many runs each packed training held
    confirmed: list[Confirmation] = field(default_factory=list)  # the confirmation stage's runs


def make_sampler(spec: StudySpec, n_existing: int) -> optuna.samplers.BaseSampler:
    # seed from the study's first seed and how many trials exist, so a resumed study does not
    # replay the first random draws of the previous run
    seed = spec.seeds[0] * 1000 + n_existing
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        # one seed for the study's life: the grid's order comes from it, and a sampler made per
        # trial with another seed would map the next unvisited grid id to a point already drawn
        return optuna.samplers.GridSampler(space.grid_space(spec), seed=spec.seeds[0])
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    epochs = spec.student.recipe.epochs
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, epochs // 3))
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


def open_study(spec: StudySpec, *, heartbeat: int = HEARTBEAT_SECONDS) -> optuna.Study:
    storage = open_storage(spec.storage, heartbeat=heartbeat, grace=3 * heartbeat)
    try:
        existing = len(optuna.load_study(study_name=spec.name, storage=storage).trials)
    except KeyError:
        existing = 0
    # multi_objective: accuracy up, student parameter count down (Optuna keeps the Pareto front)
    directions = ["maximize", "minimize"] if spec.multi_objective else ["maximize"]
    return optuna.create_study(study_name=spec.name, storage=storage, directions=directions,
                               sampler=make_sampler(spec, existing), pruner=make_pruner(spec),
                               load_if_exists=True)


def get_teacher(spec: StudySpec, data: ImageSet, recorder: Recorder, workdir: Path, device: str,
                locks: Locks = ProcessLocks()) -> Trained:
    cfg = space.teacher_config(spec, device)
    tags = {"study": spec.name}
    if spec.teacher.checkpoint is not None:
        with locks.hold(f"teacher-checkpoint:{spec.teacher.checkpoint.name}"):
            return from_checkpoint(spec.teacher.checkpoint, cfg, data, recorder=recorder, tags=tags)
    params = init_params(cfg, data) if cfg.init else None
    return obtain("teacher", cfg, data, recorder=recorder, workdir=workdir, tags=tags, locks=locks, params=params,
                  train_fn=run_trainer(spec))  # processes: N trains the teacher on N processes too


def init_params(cfg, data: ImageSet) -> dict[str, str]:
    """``teacher.init``: the head tensors the fine-tuning re-creates (the file's class count differs), logged."""
    from kdsweep.core.models import build_model
    from kdsweep.core.weights import read_state_dict, replaced_head

    model = build_model(cfg.arch, num_classes=data.num_classes, width=cfg.width, arch_args=cfg.arch_kwargs)
    replaced = replaced_head(model, read_state_dict(cfg.init), cfg.init, f"teacher {cfg.arch}")
    return {"init_replaced": ",".join(replaced) or "none"}


def train_teacher(spec: StudySpec, *, recorder: Recorder, workdir: Path = Path("mlruns"),
                  out: Path | None = None, data: ImageSet | None = None) -> tuple[Trained, Path]:
    """Train (or reuse) the study's teacher alone, the seed projects' ``--mode teacher``.

    Recorded as ``run_study`` records it, so a later ``study run`` of the same spec reuses it;
    the weights are also written to ``out`` for ``teacher.checkpoint`` in other studies.
    """
    if spec.teacher.mode == "online":
        raise StudyError("teacher.mode='online': an online teacher is trained with each student, never alone")
    device = str(resolve_device(spec.device))
    data = load_data(spec) if data is None else data
    with stores.single_writer(spec.tracking_uri, field="tracking_uri"):
        recorder.begin_study(spec.name, {"spec": spec.model_dump(mode="json"), "data_identity": data.identity,
                                      "data": describe_data(data, spec.data.root)})
        teacher = get_teacher(spec, data, recorder, workdir, device)
        recorder.end_study({"teacher_test_acc": teacher.summary.final_test_acc})
    cfg = space.teacher_config(spec, device)
    # an arch string may be a file's path (/abs/mynets.py:tiny) or carry a colon: one safe file name
    arch = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.arch.rsplit("/", 1)[-1])
    path = save_checkpoint(weights_payload(cfg, data.num_classes, teacher.model),
                           out or workdir / "teachers" / f"{spec.name}-{arch}-x{cfg.width}.pt")
    return teacher, path


def load_data(spec: StudySpec) -> ImageSet:
    """The study's data, with its validation split held out of the training images (``data.val_split``)."""
    from kdsweep.core.memory import open_data

    d = spec.data
    data = open_data(d.dataset, d.root, loader=d.loader, memory_budget=d.memory_budget, augment=d.augment,
                     image_size=d.image_size, workers=d.workers, max_bad_images=d.max_bad_images,
                     limit_per_file=d.limit_per_file, image_column=d.image_column, label_column=d.label_column)
    return hold_out(data, d.val_split, seed=d.split_seed)


def run_trainer(spec: StudySpec):
    """``train``, or with ``processes: N`` the same run on N data-parallel processes (core/distributed.py)."""
    if spec.processes == 1:
        return train
    from functools import partial

    from kdsweep.core.distributed import train_on

    return partial(train_on, spec.processes)


def run_study(spec: StudySpec, *, recorder: Recorder, workdir: Path = Path("mlruns"),
              heartbeat: int = HEARTBEAT_SECONDS, on_open: Callable[[int], None] | None = None,
              search: bool = True, data: ImageSet | None = None) -> StudyOutcome:
    """Train the teacher, then trials until the study holds ``spec.n_trials`` finished ones, then the
    confirmation stage (``spec.confirm``); ``search=False`` runs (or resumes) the confirmation only.

    Several processes may run this on one PostgreSQL study (see ``coordination``): together
    they finish ``spec.n_trials`` trials, and the teacher and baselines are trained once.
    ``on_open`` is told how many trials the study already held finished (a resumed study),
    before any training; the CLI's progress bar starts from there. ``data``: the data set already
    loaded (the CLI's preflight loads it once), else read here.
    """
    # device and data first: a missing GPU or a folder without the data set must stop the study
    # before any store, file or run exists
    device = str(resolve_device(spec.device))
    data = load_data(spec) if data is None else data
    with stores.single_writer(spec.storage, field="storage"), \
            stores.single_writer(spec.tracking_uri, field="tracking_uri"):
        return _run_study(spec, data, device, recorder=recorder, workdir=workdir, heartbeat=heartbeat,
                          on_open=on_open, search=search)


def _run_study(spec: StudySpec, data: ImageSet, device: str, *, recorder: Recorder, workdir: Path,
               heartbeat: int, on_open: Callable[[int], None] | None, search: bool = True) -> StudyOutcome:
    locks = coordination.locks_for(spec.storage)
    with locks.hold("open-storage"):  # workers starting together on an empty database: one creates the tables
        study = open_study(spec, heartbeat=heartbeat)
    with locks.hold(f"begin:{spec.name}"):  # one parent run, one experiment, however many workers start
        recorder.begin_study(spec.name, {"spec": spec.model_dump(mode="json"), "data_identity": data.identity,
                                      "data": describe_data(data, spec.data.root)})
    with locks.hold(f"recover:{spec.name}"):  # trials of killed or interrupted runs: fail, close, retry
        recovery.recover(study, recorder)
    with locks.hold(f"first-trials:{spec.name}"):  # each searched method once, queued by one worker only
        if not study.trials:
            for params in space.first_trials(spec):
                study.enqueue_trial(params, skip_if_exists=True)
    if on_open is not None:
        on_open(sum(t.state in DONE for t in study.trials))
    teacher = None  # teacher.mode online: each trial trains its own (study/online.py)
    if spec.teacher.mode == "pretrained":
        teacher = get_teacher(spec, data, recorder, workdir, device, locks)
        study.set_user_attr("teacher_test_acc", teacher.summary.final_test_acc)

    source = tables.teacher_source(spec, data, teacher.model, device=device, workdir=workdir,
                                   locks=locks) if teacher else None
    # jobs > 1: trials in threads hand their trainings to a pool this thread serves (study/jobs.py)
    pool = TrainingPool(spec.jobs) if spec.jobs > 1 else None
    trial_locks = pool.locks(locks) if pool is not None else locks  # a thread waiting on a lock: idle
    objective = Objective(spec, data, source, teacher, recorder=recorder, workdir=workdir, device=device,
                          locks=trial_locks, train_fn=pool.train if pool is not None else run_trainer(spec))

    def trial_loop(st: optuna.Study) -> int:
        return coordination.run_trials(st, objective, n_trials=spec.n_trials, locks=trial_locks,
                                       timeout=spec.timeout, make_sampler=lambda n: make_sampler(spec, n),
                                       poll=max(0.5, heartbeat / 2), stop=lambda: pool is not None and pool.closed,
                                       sleep=pool.sleep if pool is not None else time.sleep)

    # Exceptions inside a trial (divergence, out of memory, a model bug) fail that trial only;
    # KeyboardInterrupt and SystemExit still stop the study.
    if search:  # the students' latency, on this device before it trains anything else (study/speed.py)
        objective.speeds.measure_known()
    try:
        if not search:
            pass
        elif pool is None:
            trial_loop(study)
        else:
            jobs.run_packed(pool, lambda: open_study(spec, heartbeat=heartbeat), trial_loop)
    except StopStudy as stop:  # e.g. the tracking server is gone: its trial is FAIL, retried on resume
        error = type(stop.error)(f"{stop.error}; the study stopped. Finished trials are kept; rerun the same "
                                 "command to resume (the interrupted trial is retried)")
        error.resumable = True  # the CLI adds the command line that resumes
        raise error from None
    outcome = summarize(study, teacher.summary.final_test_acc if teacher else None)
    outcome.packed = list(pool.groups) if pool is not None else []
    if spec.confirm is not None and outcome.complete > 0:
        confirm_pool = TrainingPool(spec.jobs) if spec.jobs > 1 else None
        # workers on one study split the stage by (trial, seed) (study/confirm.py)
        outcome.confirmed = confirm(spec, study, data, source=source, teacher=teacher, recorder=recorder,
                                    workdir=workdir, device=device, locks=locks, pool=confirm_pool)
    recorder.end_study({"complete": outcome.complete, "pruned": outcome.pruned, "failed": outcome.failed,
                        "best_value": outcome.best_value})
    if outcome.complete == 0 and outcome.failed > 0:
        reasons = sorted({t.user_attrs.get("fail_reason", "see the trial logs") for t in study.trials
                          if t.state == TrialState.FAIL})
        raise StudyError(f"study {spec.name!r}: every trial failed ({outcome.failed}); first reason: {reasons[0]}")
    return outcome


def summarize(study: optuna.Study, teacher_acc: float | None) -> StudyOutcome:
    trials = study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # values[0] is the accuracy objective in single- and multi-objective studies alike
    best = max(complete, key=lambda t: t.values[0]) if complete else None
    return StudyOutcome(
        study_name=study.study_name,
        complete=len(complete),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        best_value=best.values[0] if best else None,
        best_params=dict(best.params) if best else {},
        best_trial=best.number if best else None,
        teacher_acc=teacher_acc,
    )

