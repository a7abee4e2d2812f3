"""The built-in models with their sizes: what ``kdsweep models list`` prints.

Sizes are counted on PyTorch's ``meta`` device: the layers get shapes but no storage, so the
25M-parameter nets are counted without allocating or initialising their weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdsweep.core.models import MODELS, build_model, count_params


@dataclass(frozen=True)
class ModelEntry:
    name: str
    params: dict[int, int]  # number of classes -> trainable parameters
    family: str  # the file under kdsweep/core/models that builds it (e.g. wide_resnet), or a plugin's module
    summary: str  # the builder's first docstring line


def catalog(class_counts: tuple[int, ...] = (10, 100)) -> list[ModelEntry]:
    """Every registered model, by name, with its parameter count for each number of classes."""
    entries = []
    for name in MODELS.names():
        with torch.device("meta"):
            params = {c: count_params(build_model(name, num_classes=c)) for c in class_counts}
        builder = MODELS.get(name)
        doc = (builder.__doc__ or "").strip()
        family = builder.__module__.removeprefix("kdsweep.core.models.")
        entries.append(ModelEntry(name, params, family, doc.splitlines()[0] if doc else ""))
    return entries
