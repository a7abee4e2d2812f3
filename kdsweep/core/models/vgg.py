"""VGG with batch norm (Simonyan & Zisserman, ICLR 2015), in the CIFAR form of the KD benchmarks.

Five blocks of 3x3 conv(+bias)-BN-ReLU layers; 2x2 max-pools after the first three, so a
32px image reaches the last two blocks at 4x4; global average pooling and one linear layer
(no 4096-unit classifier). The layer counts per block are the paper's configurations A
(vgg11), B (vgg13), D (vgg16) and E (vgg19); vgg8 is CRD's (Tian et al., ICLR 2020) one conv
per block. Unlike ImageNet VGG the last block's output is not max-pooled on 32px input.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdsweep.core.models.layers import check_args, init_weights, scale
from kdsweep.core.models.registry import MODELS

_BLOCK_CHANNELS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
    def __init__(self, convs: Sequence[int], num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ends = []  # feature distillation's defaults (kdsweep.core.taps)
        c_in = in_channels
        for i, (base, n) in enumerate(zip(_BLOCK_CHANNELS, convs)):
            c_out = scale(base, width)
            for _ in range(n):
                # The conv keeps its bias, as in the reference counts, although BN follows.
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
            if i != 3:  # a pool follows: a max-pool after the first three blocks, the global pool after the last
                ends.append(f"features.{len(layers) - 1}")
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        # The last ReLU of each block before a pool: one map per resolution (32/16/8/4 px at 32px
        # input). The reference code's list also has block 4's output, at block 5's size (name
        # it in student.features / teacher.features to tap it).
        self.feature_stages = tuple(ends)
        self.embedding_layer = "fc"
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_weights(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


# convs per block, and the counts (100 classes, 10 classes) of the same networks (vgg8_bn ...
# vgg19_bn) in HobbitLong/RepDistiller models/vgg.py and megvii-research/mdistiller
# mdistiller/models/cifar/vgg.py.
_CONFIGS = {
    "vgg8": ((1, 1, 1, 1, 1), 3_965_028, 3_918_858),
    "vgg11": ((1, 1, 2, 2, 2), 9_277_284, 9_231_114),
    "vgg13": ((2, 2, 2, 2, 2), 9_462_180, 9_416_010),
    "vgg16": ((2, 2, 3, 3, 3), 14_774_436, 14_728_266),
    "vgg19": ((2, 2, 4, 4, 4), 20_086_692, 20_040_522),
}


def _register(name: str) -> None:
    convs, c100, c10 = _CONFIGS[name]

    def build(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
        check_args(num_classes, width, in_channels)
        return VGG(convs, num_classes, width, in_channels)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"{name} with BN, {sum(convs)} convs ({'/'.join(map(str, convs))} per block) and one linear layer.\n\n"
        f"Parameters: {c100:,} at 100 classes ({c10:,} at 10), equal to ``{name}_bn`` in "
        "HobbitLong/RepDistiller ``models/vgg.py`` and megvii-research/mdistiller "
        "``mdistiller/models/cifar/vgg.py``. ``width`` multiplies the 64..512 channel counts."
    )
    MODELS.register(name)(build)


for _name in _CONFIGS:
    _register(_name)
