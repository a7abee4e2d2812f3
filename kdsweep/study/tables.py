"""Which teacher source a study's distilled trials use: the online teacher or its view table.

The table (kdsweep.core.teachers) runs the teacher once on every augmented view of every
training image, ``num_views(4) = 162`` forwards per image; online, the teacher runs once per
image per epoch of every distilled training, ``n_trials * len(seeds) * epochs`` forwards per
image. ``teacher_table: auto`` builds the table when it is the cheaper of the two, on any
device; ``on`` and ``off`` force it. Tables are saved under ``workdir/tables`` keyed by teacher
weights, data, augmentation and precision, so a rerun or another study with the same teacher
and data reads the file instead of recomputing it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdsweep.core.config import TrainConfig
from kdsweep.core.data import ImageSet, num_views
from kdsweep.core.methods import LOSSES
from kdsweep.core.precision import teacher_bf16
from kdsweep.core.teachers import OnlineTeacher, TableTeacher, TeacherSource, table_for
from kdsweep.core.trainer import resolve_device
from kdsweep.study.coordination import Locks, ProcessLocks
from kdsweep.study.spec import StudySpec

PAD = 4  # the trainer's augmentation: 4-pixel pad, random crop, flip


def wants_table(spec: StudySpec) -> bool:
    """Whether the study's trials should read teacher logits from a view table."""
    recipe = spec.student.recipe
    if spec.teacher_table == "off" or spec.teacher.mode != "pretrained" or not recipe.augment:
        return False  # no fixed teacher, or no augmented views to tabulate
    if all(LOSSES.get(m).taps for m in spec.search.methods(spec.student.method)):
        return False  # only feature methods: each runs the teacher itself (the table holds logits only)
    if spec.teacher_table == "on":
        return True
    online_passes = spec.n_trials * len(spec.seeds) * recipe.epochs
    return online_passes >= num_views(PAD)


def teacher_source(spec: StudySpec, data: ImageSet, teacher: torch.nn.Module, *, device: str, workdir: Path,
                   locks: Locks = ProcessLocks()) -> TeacherSource:
    """The online teacher (BatchNorm folded), or a table in front of it when :func:`wants_table`;
    with ``teacher.stored_labels`` the stored crops and soft labels (study/labels.py) instead."""
    if spec.teacher.stored_labels is not None:
        from kdsweep.study.labels import stored_source

        return stored_source(spec, data, teacher, device=device, workdir=workdir, locks=locks)
    online = OnlineTeacher(teacher, fold_bn=True)
    if not wants_table(spec) or data.loader == "stream":  # no fixed set of views to tabulate
        return online
    dev = torch.device(device)
    bf16 = teacher_bf16(spec.student.recipe.precision, dev)  # what the trainer gives the online teacher
    with locks.hold(f"teacher-table:{spec.name}"):  # workers of one study: one computes, the others read
        table = table_for(online, data, device=dev, bf16=bf16, pad=PAD, cache_dir=Path(workdir) / "tables")
    return TableTeacher(table, online)


def describe_source(source: TeacherSource, cfg: TrainConfig) -> str:
    """Where a distilled run's soft targets come from, for its params: ``view table, bf16``, ``online, fp32``."""
    if hasattr(source, "store"):  # core/soft_labels.StoredLabels
        meta = source.store.meta
        return f"stored top-{meta['top_k']} labels of {meta['crops']} crops per image"
    kind = "view table" if isinstance(source, TableTeacher) else "online"
    if LOSSES.get(cfg.method).taps:  # a feature method runs the teacher in every step, table or not
        kind = "online (feature method: the teacher runs every step)"
    return f"{kind}, {'bf16' if teacher_bf16(cfg.precision, resolve_device(cfg.device)) else 'fp32'}"


def feature_params(source: TeacherSource, cfg: TrainConfig, data: ImageSet) -> dict[str, int]:
    """``connector_params`` of a feature method's run (its trainable parts beside the student); {} otherwise."""
    if not LOSSES.get(cfg.method).taps:
        return {}
    from kdsweep.core.feature_distiller import connector_size

    return {"connector_params": connector_size(cfg, source, data)}
