"""Teacher and student networks, looked up by name so a study spec can pick them.

One file per family, each registering its builders in ``MODELS``. Every builder has the
signature ``(num_classes, width=1.0, in_channels=3)``. ``width`` multiplies channel counts, so
one family gives a teacher (1.0) and thinner students (0.5, 0.25) without a new class per size.
All networks end in adaptive average pooling, so CIFAR 32px batches and 160px image-folder
batches go through the same model. Plain ``nn.Module`` layers only: channels_last and bf16
autocast work without special cases.
"""

from __future__ import annotations

from torch import nn

from kdsweep.core.models.registry import MODELS
from kdsweep.core.models import plain_cnn, resnet, torchvision_resnet  # noqa: F401  (they register)
from kdsweep.core.models import (  # noqa: F401  (the CIFAR-100 KD benchmark zoo; they register)
    mobilenetv2, resnet_bottleneck, resnet_x4, shufflenet_v1, shufflenet_v2, vgg, wide_resnet,
)
# build_model takes any arch string (built-in, torchvision:, timm:, FILE.py:fn, module:fn): see sources.py
from kdsweep.core.models.sources import ArchError, build_model, identity, parse_arch, scales_with_width

__all__ = ["MODELS", "ArchError", "build_model", "count_params", "identity", "parse_arch", "scales_with_width"]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters, the size reported for teacher/student pairs."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
