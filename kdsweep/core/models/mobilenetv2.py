"""MobileNetV2 (Sandler et al., CVPR 2018) in the CIFAR form of the KD benchmarks, width 0.5.

Inverted residual blocks: a 1x1 expansion (factor t) with BN-ReLU, a 3x3 depthwise conv with
BN-ReLU, a linear 1x1 projection with BN; the input is added when stride is 1 and the shape is
kept. The paper's Table 2 stages (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2)
(6,96,3,1) (6,160,3,2) (6,320,1,1), changed for 32px images as CRD (Tian et al., ICLR 2020) does:
the second stage keeps stride 1 (the stem has stride 2), and the t=1 block keeps its 1x1
expansion conv. All channels are halved (CRD's ``mobile_half``) except the final 1x1 conv's 1280.
"""

from __future__ import annotations

import torch
from torch import nn

from kdsweep.core.models.layers import check_args, init_weights, scale
from kdsweep.core.models.registry import MODELS

# (expansion t, channels c at the paper's width 1.0, blocks n, stride s of the first block)
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = c_in * t
        self.body = nn.Sequential(
            *_conv_bn(c_in, hidden, 1),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            *_conv_bn(hidden, c_out, 1, relu=False),
        )
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, multiplier: float, in_channels: int) -> None:
        super().__init__()
        c_in = scale(32, multiplier)
        layers: list[nn.Module] = _conv_bn(in_channels, c_in, 3, stride=2)
        ends = []
        for k, (t, c, n, s) in enumerate(_STAGES):
            c_out = scale(c, multiplier)
            for j in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if j == 0 else 1, t))
                c_in = c_out
            ends.append(f"features.{len(layers) - 1}")
        # feature distillation's defaults (kdsweep.core.taps): the last block at each resolution
        # (after the table's stages 2, 3, 5 and 7: 16/8/4/2 px at 32px input), as the reference
        # code's feature list after the stem; not the final 1x1 conv
        self.feature_stages = tuple(ends[k] for k in (1, 2, 4, 6))
        self.embedding_layer = "fc"
        # As in the paper, the last conv is not thinned below 1280 channels.
        last = scale(1280, max(1.0, multiplier))
        self.features = nn.Sequential(*layers, *_conv_bn(c_in, last, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@MODELS.register("mobilenetv2")
def mobilenetv2(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """CIFAR MobileNetV2 at the paper's width multiplier 0.5 (the KD benchmarks' student).

    Parameters: 812,836 at 100 classes (697,546 at 10), equal to ``mobile_half`` (listed as
    ``MobileNetV2``) in HobbitLong/RepDistiller ``models/mobilenetv2.py`` and
    megvii-research/mdistiller ``mdistiller/models/cifar/mobilenetv2.py``. ``width`` multiplies
    that 0.5: width 2.0 is the paper's full-width net; the final 1280-channel conv only grows.
    """
    check_args(num_classes, width, in_channels)
    return MobileNetV2(num_classes, 0.5 * width, in_channels)
