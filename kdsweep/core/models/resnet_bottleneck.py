"""The KD papers' CIFAR ResNet-50: He et al. 2016's bottleneck ResNet-50 with a CIFAR stem.

Four stages of 3/4/6/3 bottleneck blocks (1x1 reduce, 3x3, 1x1 expand x4; stride on the 3x3)
with 64/128/256/512 inner channels, as in the paper's Table 1, but a stride-1 3x3 stem and no
max-pool, so a 32px image reaches the last stage at 4x4. Shortcuts are identities, or 1x1
conv+BN projections where the shape changes. This is the ``ResNet50`` that CRD (Tian et al.,
ICLR 2020) and DKD (Zhao et al., CVPR 2022) use as a CIFAR-100 teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from kdsweep.core.models.layers import check_args, conv_bn_relu, init_weights, scale
from kdsweep.core.models.registry import MODELS

EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, mid: int, stride: int) -> None:
        super().__init__()
        c_out = mid * EXPANSION
        self.body = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class BottleneckResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        c_in = scale(64, width)
        self.stem = nn.Sequential(*conv_bn_relu(in_channels, c_in))
        layers: list[nn.Module] = []
        for i, (base, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            mid = scale(base, width)
            for j in range(n):
                layers.append(Bottleneck(c_in, mid, stride=2 if (i > 0 and j == 0) else 1))
                c_in = mid * EXPANSION
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        # feature distillation's defaults (kdsweep.core.taps): the last block of each stage
        self.feature_stages = tuple(f"layers.{sum(blocks[:i + 1]) - 1}" for i in range(len(blocks)))
        self.embedding_layer = "fc"
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


@MODELS.register("resnet50")
def resnet50(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """CIFAR bottleneck ResNet-50 (He et al. 2016, 3/4/6/3 blocks, 2048-channel output).

    Parameters: 23,705,252 at 100 classes (23,520,842 at 10), equal to ``ResNet50`` in
    HobbitLong/RepDistiller ``models/resnetv2.py`` and megvii-research/mdistiller
    ``mdistiller/models/cifar/resnetv2.py``. ``width`` multiplies the stem and inner channels.
    """
    check_args(num_classes, width, in_channels)
    return BottleneckResNet((3, 4, 6, 3), num_classes, width, in_channels)
