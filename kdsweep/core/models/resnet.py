"""ResNets: He et al. 2016's CIFAR family (resnet8-110) and the kuangliu-style CIFAR ResNet-18."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdsweep.core.models.layers import check_args, conv_bn_relu, init_weights, scale
from kdsweep.core.models.registry import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 convs plus identity; a 1x1 conv+BN projection (option B) when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem (no max-pool: 32px inputs are already small), BasicBlock stages, GAP, linear."""

    def __init__(
        self, stem: int, stages: Sequence[int], blocks: Sequence[int], num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(in_channels, stem))
        layers: list[nn.Module] = []
        c_in = stem
        for i, (c_out, n) in enumerate(zip(stages, blocks)):
            for j in range(n):
                # Downsample at the first block of every stage after the first.
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        # feature distillation's defaults (kdsweep.core.taps): the last block of each stage
        ends = [sum(blocks[:i + 1]) - 1 for i in range(len(blocks))]
        self.feature_stages = tuple(f"layers.{e}" for e in ends)
        self.embedding_layer = "fc"
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def cifar_resnet(depth: int, num_classes: int, width: float = 1.0, in_channels: int = 3) -> ResNet:
    """He et al. 2016 CIFAR ResNet with 6n+2 layers and 16/32/64 channels (times width)."""
    check_args(num_classes, width, in_channels)
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth!r}")
    n = (depth - 2) // 6
    c = [scale(ch, width) for ch in (16, 32, 64)]
    return ResNet(c[0], c, [n, n, n], num_classes, in_channels)


def _register_cifar_resnet(depth: int) -> None:
    # A named function per depth so the registry holds the uniform builder signature.
    def build(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
        return cifar_resnet(depth, num_classes, width, in_channels)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016), {(depth - 2) // 6} blocks per stage."
    MODELS.register(f"resnet{depth}")(build)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register_cifar_resnet(_depth)


@MODELS.register("resnet18")
def resnet18(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-18 as in kuangliu/pytorch-cifar, the usual KD-repo teacher (~11.2M params).

    Unlike torchvision's it keeps a stride-1 3x3 stem and no max-pool, so 32px inputs
    still reach the last stage at 4x4.
    """
    check_args(num_classes, width, in_channels)
    c = [scale(ch, width) for ch in (64, 128, 256, 512)]
    return ResNet(c[0], c, [2, 2, 2, 2], num_classes, in_channels)
