"""A study's stored soft labels (FKD, core/soft_labels.py): written once per teacher, data and crop
recipe under ``workdir/soft_labels/<key>``, then read by every trial and every worker that shares
the folder (a worker on another machine reads it from the same shared path)."""

from __future__ import annotations

from pathlib import Path

import torch

from kdsweep.core.data import ImageSet
from kdsweep.core.soft_labels import CropRecipe, DecodedImages, LabelStore, StoredLabels, store_key, write_store
from kdsweep.study.coordination import Locks, ProcessLocks
from kdsweep.study.schema import StoredLabelsSpec
from kdsweep.study.spec import StudySpec


def recipe_of(spec: StudySpec) -> CropRecipe:
    s = spec.teacher.stored_labels or StoredLabelsSpec()
    return CropRecipe(crops=s.crops, top_k=s.top_k, scale=tuple(s.scale), seed=spec.teacher.seed)


def store_folder(spec: StudySpec, data: ImageSet, teacher: torch.nn.Module, workdir: Path) -> Path:
    return Path(workdir) / "soft_labels" / store_key(teacher, data.identity, recipe_of(spec), data.mean, data.std)


def stored_labels(spec: StudySpec, data: ImageSet, teacher: torch.nn.Module, *, device: str, workdir: Path,
                  locks: Locks = ProcessLocks()) -> LabelStore:
    """The finished store of this teacher on the study's training images (written or finished here)."""
    folder = store_folder(spec, data, teacher, workdir)
    with locks.hold(f"soft-labels:{folder.name}"):  # workers of one study: one writes, the others read
        store = LabelStore(folder) if (folder / "meta.json").exists() else None
        if store is None or not store.complete:
            if data.loader == "stream":  # decoded one image at a time, crops at the side the model sees
                images, size = DecodedImages(data.train), (data.image_size, data.image_size)
            else:
                images, size = data.train_x, None
            write_store(teacher, images, data.mean, data.std, recipe_of(spec), folder, num_classes=data.num_classes,
                        data_identity=data.identity, device=device, size=size)
    return LabelStore(folder)


def stored_source(spec: StudySpec, data: ImageSet, teacher: torch.nn.Module, *, device: str, workdir: Path,
                  locks: Locks = ProcessLocks()) -> StoredLabels:
    return StoredLabels(stored_labels(spec, data, teacher, device=device, workdir=workdir, locks=locks),
                        data.identity)
