"""Teacher and student networks, looked up by name so a study spec can pick them.

Every builder has the signature ``(num_classes, width=1.0, in_channels=3)``. ``width``
multiplies channel counts, so one family gives a teacher (1.0) and thinner students
(0.5, 0.25) without a new class per size. All networks end in adaptive average pooling,
so CIFAR 32px batches and 160px image-folder batches go through the same model.
Plain ``nn.Module`` layers only: channels_last and bf16 autocast work without special cases.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from kdsweep.core.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def build_model(name: str, *, num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """Build a registered model; unknown names raise ValueError listing the choices."""
    return MODELS.get(name)(num_classes=num_classes, width=width, in_channels=in_channels)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters, the size reported for teacher/student pairs."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_args(num_classes: int, width: float, in_channels: int) -> None:
    # Checked in every builder, not just build_model, because callers may use MODELS.get directly.
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels!r}")


def _scale(channels: int, width: float) -> int:
    """Channel count times width, rounded, never below 1 so tiny widths still build."""
    return max(1, int(round(channels * width)))


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    # No conv bias: the following BatchNorm's shift makes it redundant.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (He et al. 2015) for the ReLU nets; BN starts as identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------
# ResNets: He et al. 2016 CIFAR family and the kuangliu-style CIFAR ResNet-18
# ---------------------------------------------------------------------------


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
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, stem))
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
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def cifar_resnet(depth: int, num_classes: int, width: float = 1.0, in_channels: int = 3) -> ResNet:
    """He et al. 2016 CIFAR ResNet with 6n+2 layers and 16/32/64 channels (times width)."""
    _check_args(num_classes, width, in_channels)
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth!r}")
    n = (depth - 2) // 6
    c = [_scale(ch, width) for ch in (16, 32, 64)]
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
    _check_args(num_classes, width, in_channels)
    c = [_scale(ch, width) for ch in (64, 128, 256, 512)]
    return ResNet(c[0], c, [2, 2, 2, 2], num_classes, in_channels)


@MODELS.register("torchvision_resnet18")
def torchvision_resnet18(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """torchvision's ImageNet ResNet-18, untrained; for image-folder data at ImageNet-like sizes."""
    _check_args(num_classes, width, in_channels)
    if width != 1.0:
        raise ValueError(f"torchvision_resnet18 has a fixed width; width must be 1.0, got {width!r}")
    import torchvision  # imported here so the module stays importable with torch alone

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


# ---------------------------------------------------------------------------
# Plain CNNs from the seed projects
# ---------------------------------------------------------------------------


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
        for i, (c_out, n_convs) in enumerate(stages):
            for _ in range(n_convs):
                layers += _conv_bn_relu(c_in, c_out)
                c_in = c_out
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if hidden is None:
            self.head: nn.Module = nn.Linear(c_in, num_classes)
        else:
            self.head = nn.Sequential(
                nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
            )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.head(torch.flatten(x, 1))


@MODELS.register("teachernet12")
def teachernet12(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    """12 conv layers of 12 channels (Student-teacher with EMA seed project), pools after 4 and 8."""
    _check_args(num_classes, width, in_channels)
    c = _scale(12, width)
    return PlainCNN([(c, 4), (c, 4), (c, 4)], pool_after=(0, 1), hidden=None,
                    num_classes=num_classes, in_channels=in_channels)


def _epai_cnn(base: Sequence[int], num_classes: int, width: float, in_channels: int) -> nn.Module:
    # Four stages of two convs, pools after the first three, 128-unit head: the same shape
    # for teacher and student so only the channel counts separate them.
    _check_args(num_classes, width, in_channels)
    stages = [(_scale(ch, width), 2) for ch in base]
    return PlainCNN(stages, pool_after=(0, 1, 2), hidden=_scale(128, width),
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
    _check_args(num_classes, width, in_channels)
    stages = [(_scale(ch, width), 1) for ch in (32, 64, 128, 256, 256)]
    return PlainCNN(stages, pool_after=(0, 1, 2, 3), hidden=None,
                    num_classes=num_classes, in_channels=in_channels)
