"""torchvision's ImageNet ResNet-18 under a built-in name (kept for specs that name it)."""

from __future__ import annotations

from torch import nn

from kdsweep.core.models.layers import check_args
from kdsweep.core.models.registry import MODELS


@MODELS.register("torchvision_resnet18")
def torchvision_resnet18(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """torchvision's ImageNet ResNet-18, untrained; for image-folder data at ImageNet-like sizes."""
    check_args(num_classes, width, in_channels)
    if width != 1.0:
        raise ValueError(f"torchvision_resnet18 has a fixed width; width must be 1.0, got {width!r}")
    import torchvision  # imported here so the module stays importable with torch alone

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@MODELS.register("torchvision_resnet34")
def torchvision_resnet34(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """torchvision's ImageNet ResNet-34, untrained: the teacher of studies/imagenet-resnet34-resnet18.yaml."""
    check_args(num_classes, width, in_channels)
    if width != 1.0 or in_channels != 3:
        raise ValueError(f"torchvision_resnet34 takes width 1.0 and 3 channels, got {width!r} and {in_channels!r}")
    import torchvision

    return torchvision.models.resnet34(weights=None, num_classes=num_classes)
