"""One Optuna trial: sample values, train a distilled student per seed, compare with baselines.

Every decision here reads validation numbers only (``RunSummary.selection()`` and
``EpochMetrics.score``): the trial's value is the mean over seeds of the final-epoch validation
accuracy (``objective: val_acc``) or of its gain over the matched baseline on validation
(``objective: delta_vs_baseline``), and the pruner sees validation accuracy per epoch. Test
numbers pass through to the recorder untouched. Only a study with ``selection: test`` (no
validation split) selects on the test split, and its report says so. The spread over seeds is
stored beside the value, so a gain can be read against the noise.
"""

from __future__ import annotations

import gc
import logging
import statistics
from pathlib import Path
from typing import Callable

import optuna
import torch

from kdsweep.core.checkpoint import save_checkpoint
from kdsweep.core.data import ImageSet
from kdsweep.core.models import build_model, count_params
from kdsweep.core.teachers import TeacherSource
from kdsweep.core.trainer import TrainResult, train
from kdsweep.errors import DiskFullError, KdsweepError, StorageLostError, TrackingError
from kdsweep.study import space
from kdsweep.study.coordination import Locks, ProcessLocks
from kdsweep.study.online import OnlineTeacherRun
from kdsweep.study.recorder import Recorder, RunInfo
from kdsweep.study.spec import StudySpec
from kdsweep.study.speed import LatencyBook, speed_params, with_speed
from kdsweep.study.tables import describe_source, feature_params
from kdsweep.core.checkpoint import weights_payload
from kdsweep.core.summary import Selected
from kdsweep.study.teacher import Trained, data_params, model_params, obtain


# a store gone or full: every later trial would fail the same way, so the study stops and the trial
# is retried (from its last checkpoint) when the same command runs again
STORE_FAILURES = (TrackingError, StorageLostError, DiskFullError)


class StopStudy(KeyboardInterrupt):
    """Ends the study from inside a trial, after Optuna has marked the trial FAIL.

    Optuna catches the objective's exceptions (``catch``) and goes on with the next trial; it
    re-raises KeyboardInterrupt, and only that, after telling the storage. The runner turns
    this back into the ``KdsweepError`` it carries.
    """

    def __init__(self, error: KdsweepError) -> None:
        super().__init__(str(error))
        self.error = error


def describe(exc: BaseException) -> str:
    """One line for a failed trial: the exception type and the first line of its message."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, torch.OutOfMemoryError):
        return f"out of memory: {first}"[:500]
    return f"{type(exc).__name__}: {first}"[:500] if first else type(exc).__name__


class ExpectedFailures(logging.Filter):
    """Optuna logs every failed trial with its traceback. For the failures kdsweep expects
    (Ctrl-C, divergence, a lost server, out of memory) the one-line reason says it all; an
    exception in a model keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (KeyboardInterrupt, KdsweepError, torch.OutOfMemoryError)):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_failures() -> None:
    log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, ExpectedFailures) for f in log.filters):
        log.addFilter(ExpectedFailures())


def mark_failed(trial: optuna.Trial, reason: str, *, interrupted: bool = False) -> None:
    """Store why the trial failed; ``interrupted`` trials are retried when the study resumes."""
    trial.set_user_attr("fail_reason", reason[:500])
    if interrupted:
        trial.set_user_attr("interrupted", True)


class Objective:
    def __init__(self, spec: StudySpec, data: ImageSet, teacher_source: TeacherSource, teacher: Trained, *,
                 recorder: Recorder, workdir: Path, device: str, locks: Locks = ProcessLocks(),
                 train_fn: Callable[..., TrainResult] = train) -> None:
        """``train_fn`` trains the baselines and distilled students: ``core.trainer.train``, or a
        ``TrainingPool``'s ``train`` when trials run in threads (``jobs > 1``)."""
        self.spec, self.data, self.source, self.teacher = spec, data, teacher_source, teacher
        self.recorder, self.workdir, self.device, self.locks = recorder, workdir, device, locks
        self.train_fn = train_fn
        self._baselines: dict[tuple[str, float, int], Trained] = {}
        self.speeds = LatencyBook(spec, data, device)
        self._free_cuda = False
        quiet_expected_failures()

    def baseline(self, width: float, seed: int, arch: str | None = None) -> Trained:
        """The no-KD student of this arch, width and seed, trained once per study (and reused after)."""
        arch = arch or self.spec.student.arch
        if (arch, width, seed) not in self._baselines:
            cfg = space.baseline_config(self.spec, width=width, seed=seed, device=self.device, arch=arch)
            self._baselines[(arch, width, seed)] = obtain("baseline", cfg, self.data, recorder=self.recorder,
                                                          workdir=self.workdir, tags={"study": self.spec.name},
                                                          locks=self.locks, train_fn=self.train_fn)
        return self._baselines[(arch, width, seed)]

    def __call__(self, trial: optuna.Trial) -> float:
        """Run the trial; on failure record why (Optuna user attr ``fail_reason``, MLflow tag
        ``failure_reason``) and let Optuna mark it FAIL, so the study goes on with the next one."""
        if self._free_cuda:  # the last trial ran out of GPU memory: give its cache back first
            self._free_cuda = False
            gc.collect()
            torch.cuda.empty_cache()
        try:
            return self._run(trial)
        except (optuna.TrialPruned, optuna.exceptions.UpdateFinishedTrialError):
            raise  # the second: failed as stale by another worker, which queued the retry
        except KeyboardInterrupt:
            mark_failed(trial, "interrupted (Ctrl-C or SIGTERM) before the trial finished", interrupted=True)
            raise
        except STORE_FAILURES as exc:
            try:
                mark_failed(trial, str(exc), interrupted=True)
            except StorageLostError:
                pass  # left RUNNING: the rerun (dead process) or another worker (heartbeat) fails it
            raise StopStudy(exc) from exc
        except Exception as exc:
            self._free_cuda = isinstance(exc, torch.OutOfMemoryError)
            mark_failed(trial, describe(exc))
            raise

    def _run(self, trial: optuna.Trial) -> float:
        values = space.sample(trial, self.spec)
        trial.set_user_attr("values", values)  # every value of the trial, drawn or fixed: the confirmation reruns it
        scores, deltas = [], []
        for i, seed in enumerate(self.spec.seeds):
            base = self.baseline(values["width"], seed, values.get("arch"))
            # Optuna prunes single-objective studies only
            sel = self._train_one(trial, values, seed, base, report=(i == 0 and not self.spec.multi_objective))
            scores.append(sel.final_acc)
            deltas.append(sel.final_acc - base.selected_acc)
        split = sel.split  # "val" (or "test" under selection: test)
        for name, xs in ((f"{split}_acc", scores), (f"{split}_delta_vs_baseline", deltas)):
            trial.set_user_attr(f"{name}_mean", statistics.fmean(xs))
            trial.set_user_attr(f"{name}_std", statistics.stdev(xs) if len(xs) > 1 else 0.0)
        trial.set_user_attr("seeds", list(self.spec.seeds))
        value = statistics.fmean(deltas if self.spec.objective == "delta_vs_baseline" else scores)
        speed = self.speeds.of(values.get("arch", self.spec.student.arch), values["width"])
        trial.set_user_attr("latency_ms", speed.latency_ms)
        if self.spec.multi_objective:  # second objective, minimised: the student's size or its latency
            if self.spec.pareto_metric == "latency_ms":
                return value, speed.latency_ms
            arch = values.get("arch", self.spec.student.arch)
            size = count_params(build_model(arch, num_classes=self.data.num_classes, width=values["width"],
                                            arch_args=space.arch_args_of(self.spec, arch)))
            trial.set_user_attr("num_params", size)
            return value, float(size)
        return value

    def _train_one(self, trial: optuna.Trial, values: dict, seed: int, base: Trained, *, report: bool) -> Selected:
        cfg = space.student_config(self.spec, values, seed=seed, device=self.device)
        key = cfg.fingerprint(data_identity=self.data.identity)
        online = None
        if self.spec.teacher.mode == "online":  # a fresh teacher trained beside this student
            online = OnlineTeacherRun(self.spec, self.data, cfg, recorder=self.recorder, trial=trial, seed=seed,
                                      workdir=self.workdir)
        speed = self.speeds.of(cfg.arch, cfg.width)  # measured before training, on an idle device
        params = {**cfg.as_params(), **data_params(self.data), **model_params(cfg, self.data),
                  **speed_params(speed), "trial": trial.number,
                  "baseline_run_id": base.run_id,
                  "teacher_run_id": online.run_id if online else self.teacher.run_id,
                  "teacher_logits": "trained beside the student" if online else describe_source(self.source, cfg),
                  **({} if online else feature_params(self.source, cfg, self.data))}
        tags = {"study": self.spec.name, "trial": str(trial.number), "seed": str(seed)}
        attr = f"mlflow_run_id_seed{seed}"
        known = trial.user_attrs.get(attr)
        run_id = self.recorder.start(RunInfo("distilled", key, params, tags, run_id=known))
        try:
            trial.set_user_attr(attr, run_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            if known is None:  # a run only this process knows: close it (the retry opens its own)
                self.recorder.fail(run_id, "its trial was failed as stale by another worker", killed=True)
            raise

        def on_epoch(m) -> None:
            self.recorder.log_epoch(run_id, m)
            if report:  # m.score: validation accuracy (the test split's only under selection: test)
                trial.report(m.score, m.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {m.epoch} (selection accuracy {m.score:.4f})")

        try:
            # an online pair keeps the checkpoint name it always had (a resumed pair finds its epochs)
            progress = f"online-{online.key}.pt" if online is not None else f"distilled-{key}.pt"
            result = self.train_fn(cfg, self.data, teacher=None if online else self.source, on_epoch=on_epoch,
                                   accel=self.spec.accel, checkpoint_path=self.workdir / "progress" / progress,
                                   co_teacher=online.request() if online else None)
        except optuna.TrialPruned as exc:
            for rid in [run_id] + ([online.run_id] if online else []):
                self.recorder.fail(rid, str(exc), killed=True)
            raise
        except TrackingError:
            raise  # the run cannot be closed on a server that is gone
        except optuna.exceptions.UpdateFinishedTrialError:
            raise  # another worker failed the trial as stale: its retry reopens these runs and owns them
        except BaseException as exc:
            killed = isinstance(exc, (KeyboardInterrupt, StorageLostError, DiskFullError))  # resumed later
            for rid in [run_id] + ([online.run_id] if online else []):
                self.recorder.fail(rid, describe(exc), killed=killed)
            raise
        if result.resumed_from_epoch:
            # epochs trained before the resume whose log was lost (checkpointed, then killed or the server went)
            self.recorder.backfill(run_id, result.history[:result.resumed_from_epoch])
        teacher_summary = online.finish(result) if online is not None else self.teacher.summary
        summary = with_speed(result.summary().compared_with(base.summary, teacher_summary), speed)
        final = save_checkpoint(weights_payload(cfg, self.data.num_classes, result.scored_model),
                                self.workdir / "models" / f"distilled-{key}.pt")
        self.recorder.finish(run_id, summary, final)
        return summary.selection()
