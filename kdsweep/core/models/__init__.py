"""Teacher and student networks, looked up by name so a study spec can pick them.

One file per family, each registering its builders in ``MODELS`` (and declaring their names in
``registry.FAMILIES``, so that naming a model imports no torch). Every builder has the
signature ``(num_classes, width=1.0, in_channels=3)``. ``width`` multiplies channel counts, so
one family gives a teacher (1.0) and thinner students (0.5, 0.25) without a new class per size.
All networks end in adaptive average pooling, so CIFAR 32px batches and 160px image-folder
batches go through the same model. Plain ``nn.Module`` layers only: channels_last and bf16
autocast work without special cases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.models.registry import MODELS  # the family files are imported on the first build
# build_model takes any arch string (built-in, torchvision:, timm:, FILE.py:fn, module:fn): see sources.py
from kdsweep.core.models.sources import ArchError, build_model, identity, parse_arch, scales_with_width

if TYPE_CHECKING:
    from torch import nn

__all__ = ["MODELS", "ArchError", "build_model", "count_params", "identity", "parse_arch", "scales_with_width"]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters, the size reported for teacher/student pairs."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
