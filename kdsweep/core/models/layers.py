"""Helpers every built-in family shares: argument checks, width scaling, conv-BN-ReLU, init."""

from __future__ import annotations

import math

from torch import nn


def check_args(num_classes: int, width: float, in_channels: int) -> None:
    # Checked in every builder, not just build_model, because callers may use MODELS.get directly.
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels!r}")


def scale(channels: int, width: float) -> int:
    """Channel count times width, rounded, never below 1 so tiny widths still build."""
    return max(1, int(round(channels * width)))


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    # No conv bias: the following BatchNorm's shift makes it redundant.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (He et al. 2015) for the ReLU nets; BN starts as identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
