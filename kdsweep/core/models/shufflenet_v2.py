"""ShuffleNet V2 1x (Ma et al., ECCV 2018) in the CIFAR form of the KD benchmarks.

Basic unit: split the channels in half, pass one half through 1x1 conv-BN-ReLU, 3x3 depthwise
conv-BN, 1x1 conv-BN-ReLU, concatenate with the untouched half, shuffle. Down-sampling unit:
both branches see the whole input (left: depthwise 3x3 stride 2 + 1x1; right: 1x1, depthwise
3x3 stride 2, 1x1), each giving half the output, concatenated and shuffled. Stages of 1 down +
3/7/3 basic units at 116/232/464 channels, a 1x1 conv to 1024, pooling, linear (the paper's
Table 5, 1x). For 32px images the stem is a 24-channel 1x1 conv with no stride and no
max-pool, as CRD (Tian et al., ICLR 2020) uses it.
"""

from __future__ import annotations

import torch
from torch import nn

from kdsweep.core.models.layers import check_args, init_weights, scale
from kdsweep.core.models.registry import MODELS
from kdsweep.core.models.shufflenet_v1 import channel_shuffle


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, depthwise: bool = False,
             relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=c_in if depthwise else 1,
                                         bias=False), nn.BatchNorm2d(c_out)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class BasicUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(*_conv_bn(half, half, 1), *_conv_bn(half, half, 3, depthwise=True, relu=False),
                                    *_conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, change = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(change)], 1), 2)


class DownUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        half = c_out // 2
        self.left = nn.Sequential(*_conv_bn(c_in, c_in, 3, 2, depthwise=True, relu=False), *_conv_bn(c_in, half, 1))
        self.right = nn.Sequential(*_conv_bn(c_in, half, 1), *_conv_bn(half, half, 3, 2, depthwise=True, relu=False),
                                   *_conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        c_in = scale(24, width)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c_in, 1, bias=False), nn.BatchNorm2d(c_in),
                                   nn.ReLU(inplace=True)]
        ends = []  # feature distillation's defaults (kdsweep.core.taps): the last unit of each stage
        for base, n in zip((116, 232, 464), (3, 7, 3)):
            c_out = 2 * scale(base // 2, width)  # even, so the units split it in halves
            layers.append(DownUnit(c_in, c_out))
            layers += [BasicUnit(c_out) for _ in range(n)]
            ends.append(f"features.{len(layers) - 1}")
            c_in = c_out
        self.feature_stages = tuple(ends)  # not the final 1x1 conv to 1024, as the reference's list
        self.embedding_layer = "fc"
        last = scale(1024, max(1.0, width))  # the paper keeps 1024 for its 0.5x-1.5x nets
        layers += _conv_bn(c_in, last, 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@MODELS.register("shufflenetv2")
def shufflenetv2(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """CIFAR ShuffleNet V2 1x, stages 116/232/464 (the KD benchmarks' ``ShuffleV2`` student).

    Parameters: 1,355,528 at 100 classes (1,263,278 at 10), equal to ``ShuffleV2`` in
    HobbitLong/RepDistiller ``models/ShuffleNetv2.py`` and megvii-research/mdistiller
    ``mdistiller/models/cifar/ShuffleNetv2.py``. ``width`` multiplies the stem and stage widths
    (stages rounded to even numbers); the 1024-channel last conv only grows, as in the paper.
    """
    check_args(num_classes, width, in_channels)
    return ShuffleNetV2(num_classes, width, in_channels)
