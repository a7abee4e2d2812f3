"""Plain CNNs from the seed projects: conv-BN-ReLU stages, max-pools, GAP and a head."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdsweep.core.models.layers import check_args, conv_bn_relu, init_weights, scale
from kdsweep.core.models.registry import MODELS


class PlainCNN(nn.Module):
    """Stages of conv-BN-ReLU blocks with max-pools between them, then GAP and a head.

    ``pool_after`` lists the stages followed by a 2x2 max-pool; the remaining downsampling
    is left to adaptive pooling so the net accepts any input size.
    """

    def __init__(
        self,
        stages: Sequence[tuple[int, int]],
        pool_after: Sequence[int],
        hidden: int | None,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        ends = []  # feature distillation's defaults (kdsweep.core.taps): each stage's last ReLU
        for i, (c_out, n_convs) in enumerate(stages):
            for _ in range(n_convs):
                layers += conv_bn_relu(c_in, c_out)
                c_in = c_out
            ends.append(f"features.{len(layers) - 1}")
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.feature_stages = tuple(ends)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if hidden is None:
            self.head: nn.Module = nn.Linear(c_in, num_classes)
        else:
            self.head = nn.Sequential(
                nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
            )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.head(torch.flatten(x, 1))


@MODELS.register("teachernet12")
def teachernet12(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """12 conv layers of 12 channels (Student-teacher with EMA seed project), pools after 4 and 8."""
    check_args(num_classes, width, in_channels)
    c = scale(12, width)
    return PlainCNN([(c, 4), (c, 4), (c, 4)], pool_after=(0, 1), hidden=None,
                    num_classes=num_classes, in_channels=in_channels)


def _epai_cnn(base: Sequence[int], num_classes: int, width: float, in_channels: int) -> nn.Module:
    # Four stages of two convs, pools after the first three, 128-unit head: the same shape
    # for teacher and student so only the channel counts separate them.
    check_args(num_classes, width, in_channels)
    stages = [(scale(ch, width), 2) for ch in base]
    return PlainCNN(stages, pool_after=(0, 1, 2), hidden=scale(128, width),
                    num_classes=num_classes, in_channels=in_channels)


@MODELS.register("cnn_teacher")
def cnn_teacher(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """EPAi session 29 style CIFAR-10 teacher: 32/64/96/192 channels, ~729k params at 10 classes."""
    return _epai_cnn((32, 64, 96, 192), num_classes, width, in_channels)


@MODELS.register("cnn_student")
def cnn_student(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """EPAi session 29 style CIFAR-10 student: 24/32/64/96 channels, ~230k params at 10 classes."""
    return _epai_cnn((24, 32, 64, 96), num_classes, width, in_channels)


@MODELS.register("cnn5")
def cnn5(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """5-conv student for the Imagewoof seed project: 32..256 channels, GAP, linear.

    Pools follow the first four convs: 160px inputs reach the last conv at 10x10 and
    32px inputs at 2x2, so both sizes work.
    """
    check_args(num_classes, width, in_channels)
    stages = [(scale(ch, width), 1) for ch in (32, 64, 128, 256, 256)]
    return PlainCNN(stages, pool_after=(0, 1, 2, 3), hidden=None,
                    num_classes=num_classes, in_channels=in_channels)
