"""The teacher of an online-distillation trial (``teacher.mode: online``).

Each trial and seed trains a fresh teacher beside its student, through the same run machinery
as every other run: the student's ``RunRequest`` carries the teacher's as ``co_teacher``
(``core.trainer.CoTrainedTeacher``), so graphs aside, precision, layout, evaluation, resume,
early stopping and packing are the ones every run has. That teacher is recorded as its own run
(role ``teacher``, tags ``trial``, ``seed`` and ``mode=online``), so the report finds it through
the distilled run's ``teacher_run_id`` as it does a pretrained teacher, and a retried trial
reopens the same run.
"""

from __future__ import annotations

from pathlib import Path

from kdsweep.core.checkpoint import save_checkpoint
from kdsweep.core.config import TrainConfig
from kdsweep.core.data import ImageSet
from kdsweep.core.summary import RunSummary
from kdsweep.core.trainer import RunRequest, TrainResult
from kdsweep.study.recorder import Recorder, RunInfo
from kdsweep.study.spec import StudySpec
from kdsweep.core.checkpoint import weights_payload
from kdsweep.study.teacher import data_params, model_params
from kdsweep.core.config import arch_args_json

# the teacher steps on the student's batches, so these come from the student's recipe
SHARED_WITH_STUDENT = ("epochs", "batch_size", "augment", "precision")


def teacher_config(spec: StudySpec, student: TrainConfig) -> TrainConfig:
    """The teacher's own recipe (optimiser, lr, schedule, EMA...) on the student's batches and seed."""
    t = spec.teacher
    fields = t.recipe.model_dump()
    fields.update({name: getattr(student, name) for name in SHARED_WITH_STUDENT})
    fields["patience"] = 0  # the student's patience stops both
    return TrainConfig(arch=t.arch, width=t.width, seed=student.seed, device=student.device,
                       arch_args=arch_args_json(t.arch_args), **fields)


class OnlineTeacherRun:
    """Starts the teacher's run, hands out its ``RunRequest``, and finishes (or fails) the teacher's run."""

    def __init__(self, spec: StudySpec, data: ImageSet, student: TrainConfig, *, recorder: Recorder, trial,
                 seed: int, workdir: Path) -> None:
        self.cfg = teacher_config(spec, student)
        self.data, self.recorder, self.workdir = data, recorder, workdir
        student_key = student.fingerprint(data_identity=data.identity)
        # keyed by the pair, so it never matches (and is never reused as) a pretrained teacher
        self.key = self.cfg.fingerprint(data_identity=f"{data.identity}|online-with:{student_key}")
        params = {**self.cfg.as_params(), **data_params(data), **model_params(self.cfg, data),
                  "mode": "online", "trial": trial.number}
        tags = {"study": spec.name, "trial": str(trial.number), "seed": str(seed), "mode": "online"}
        # under the prefix recovery.py closes when a killed trial is retried
        attr = f"mlflow_run_id_seed{seed}_teacher"
        self.run_id = recorder.start(RunInfo("teacher", self.key, params, tags, run_id=trial.user_attrs.get(attr)))
        trial.set_user_attr(attr, self.run_id)
        self.result: TrainResult | None = None

    def request(self) -> RunRequest:
        """The teacher's run, to train beside the student; its epochs are logged before the student's
        callback (which may prune)."""
        return RunRequest(self.cfg, on_epoch=lambda m: self.recorder.log_epoch(self.run_id, m))

    def finish(self, student: TrainResult) -> RunSummary:
        """Record the teacher trained beside ``student``; its summary."""
        if student.co_teacher is None:
            raise RuntimeError("OnlineTeacherRun.finish() needs the result of a run trained with its request()")
        self.result = student.co_teacher
        summary = self.result.summary()
        final = save_checkpoint(weights_payload(self.cfg, self.data.num_classes, self.result.scored_model),
                                self.workdir / "models" / f"teacher-online-{self.key}.pt")
        self.recorder.finish(self.run_id, summary, final)
        return summary
