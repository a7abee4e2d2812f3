"""The KD papers' 4x-wide CIFAR ResNets, resnet8x4 and resnet32x4 (the CRD/DKD teacher-student pair).

He et al. 2016's 6n+2 CIFAR ResNet with a 32-channel stem and 64/128/256-channel stages
instead of 16 and 16/32/64, as Tian et al. (CRD, ICLR 2020) define them for their CIFAR-100
benchmark. Same blocks as ``resnet.py``: BasicBlocks, 1x1 conv+BN projections where the shape
changes (also at the first stage, since the stem is narrower than it).
"""

from __future__ import annotations

from torch import nn

from kdsweep.core.models.layers import check_args, scale
from kdsweep.core.models.registry import MODELS
from kdsweep.core.models.resnet import ResNet


def resnet_x4(depth: int, num_classes: int, width: float, in_channels: int) -> ResNet:
    """6n+2-layer CIFAR ResNet, stem 32 and stages 64/128/256 channels, all times ``width``."""
    check_args(num_classes, width, in_channels)
    n = (depth - 2) // 6
    stages = [scale(ch, width) for ch in (64, 128, 256)]
    return ResNet(scale(32, width), stages, [n, n, n], num_classes, in_channels)


@MODELS.register("resnet8x4")
def resnet8x4(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-8 with 4x channels, one block per stage (CRD's and DKD's usual student).

    Parameters: 1,233,540 at 100 classes (1,210,410 at 10), equal to ``resnet8x4`` in
    HobbitLong/RepDistiller ``models/resnet.py`` and megvii-research/mdistiller
    ``mdistiller/models/cifar/resnet.py``. ``width`` multiplies every channel count.
    """
    return resnet_x4(8, num_classes, width, in_channels)


@MODELS.register("resnet32x4")
def resnet32x4(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-32 with 4x channels, five blocks per stage (CRD's and DKD's strongest teacher).

    Parameters: 7,433,860 at 100 classes (7,410,730 at 10), equal to ``resnet32x4`` in
    HobbitLong/RepDistiller ``models/resnet.py`` and megvii-research/mdistiller
    ``mdistiller/models/cifar/resnet.py``. ``width`` multiplies every channel count.
    """
    return resnet_x4(32, num_classes, width, in_channels)
