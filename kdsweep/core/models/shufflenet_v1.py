"""ShuffleNet V1 (Zhang et al., CVPR 2018) with 3 groups, in the CIFAR form of the KD benchmarks.

Units: a grouped 1x1 conv to a quarter of the output width, a channel shuffle, a 3x3 depthwise
conv, a grouped 1x1 conv back up; BN after each conv, ReLU after the first and after the merge,
and, as in the KD benchmarks' code (not the paper), after the depthwise conv too. Stride-1 units add the input; the first unit of a stage has stride 2 and concatenates a
3x3 average-pooled copy of its input, so it produces output minus input channels itself.
As in the paper, the first unit's first 1x1 conv is not grouped (its input has few channels).
Stage widths 240/480/960 with 4/8/4 units (the paper's g=3 row of Table 1); for 32px images
the stem is a 24-channel 1x1 conv with no stride and no max-pool, as CRD (Tian et al., ICLR
2020) uses it.
"""

from __future__ import annotations

import torch
from torch import nn

from kdsweep.core.models.layers import check_args, init_weights
from kdsweep.core.models.registry import MODELS

GROUPS = 3


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups so the next grouped conv mixes them."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, first_groups: int) -> None:
        super().__init__()
        mid = c_out // 4
        self.first_groups = first_groups
        self.reduce = nn.Sequential(nn.Conv2d(c_in, mid, 1, groups=first_groups, bias=False), nn.BatchNorm2d(mid),
                                    nn.ReLU(inplace=True))
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid))
        self.expand = nn.Sequential(nn.Conv2d(mid, c_out, 1, groups=GROUPS, bias=False), nn.BatchNorm2d(c_out))
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.reduce(x), self.first_groups)
        out = self.expand(self.relu(self.depthwise(out)))
        merged = torch.cat([out, self.pool(x)], 1) if self.pool is not None else out + x
        return self.relu(merged)


def _multiple_of_12(channels: float) -> int:
    # A stage's width, its quarter and the 3 groups must divide evenly: round to 12s.
    return max(12, int(round(channels / 12)) * 12)


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        c_in = _multiple_of_12(24 * width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_in, 1, bias=False), nn.BatchNorm2d(c_in),
                                  nn.ReLU(inplace=True))
        units: list[nn.Module] = []
        ends = []  # feature distillation's defaults (kdsweep.core.taps): the last unit of each stage
        for i, (base, n) in enumerate(zip((240, 480, 960), (4, 8, 4))):
            c_stage = _multiple_of_12(base * width)
            for j in range(n):
                if j == 0:
                    units.append(ShuffleUnit(c_in, c_stage - c_in, 2, first_groups=1 if i == 0 else GROUPS))
                else:
                    units.append(ShuffleUnit(c_stage, c_stage, 1, first_groups=GROUPS))
            c_in = c_stage
            ends.append(f"units.{len(units) - 1}")
        self.units = nn.Sequential(*units)
        self.feature_stages = tuple(ends)
        self.embedding_layer = "fc"
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.units(self.stem(x))), 1))


@MODELS.register("shufflenetv1")
def shufflenetv1(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """CIFAR ShuffleNet V1, g=3, stages 240/480/960 (the KD benchmarks' ``ShuffleV1`` student).

    Parameters: 949,258 at 100 classes (862,768 at 10), equal to ``ShuffleV1`` in
    HobbitLong/RepDistiller ``models/ShuffleNetv1.py`` and megvii-research/mdistiller
    ``mdistiller/models/cifar/ShuffleNetv1.py``. ``width`` multiplies the stem and stage widths,
    rounded to multiples of 12 so the groups still divide them.
    """
    check_args(num_classes, width, in_channels)
    return ShuffleNetV1(num_classes, width, in_channels)
