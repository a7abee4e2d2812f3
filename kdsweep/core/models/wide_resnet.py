"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016), CIFAR form.

WRN-d-k: a 16-channel 3x3 stem, three stages of (d-4)/6 pre-activation blocks
(BN-ReLU-conv3x3, BN-ReLU-conv3x3) with 16k/32k/64k channels, a final BN-ReLU, global average
pooling and a linear head. The shortcut is the identity, or a bias-free 1x1 conv (no BN) where
the shape changes; as in the paper's code, that conv and the block's first conv both read the
block's pre-activated input. Dropout is not used (the KD benchmarks train without it).
"""

from __future__ import annotations

import torch
from torch import nn

from kdsweep.core.models.layers import check_args, init_weights, scale
from kdsweep.core.models.registry import MODELS


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; identity shortcut, or a 1x1 conv on the activated input."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.project = None
        if stride != 1 or c_in != c_out:
            self.project = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(act))))
        # A changed shape takes the shortcut from the activated input, an unchanged one from x.
        return out + (x if self.project is None else self.project(act))


class WideResNet(nn.Module):
    def __init__(self, depth: int, k: int, num_classes: int, width: float, in_channels: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        c_in = scale(16, width)
        self.stem = nn.Conv2d(in_channels, c_in, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for i, base in enumerate((16, 32, 64)):
            c_out = scale(base * k, width)
            for j in range(n):
                blocks.append(PreActBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        # feature distillation's defaults (kdsweep.core.taps): the last block of each stage, as the
        # reference code's feature list (block1..block3 outputs, before the final BN-ReLU)
        self.feature_stages = tuple(f"blocks.{(i + 1) * n - 1}" for i in range(3))
        self.embedding_layer = "fc"
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# Counts at 100 and 10 classes of the same networks in HobbitLong/RepDistiller models/wrn.py
# and megvii-research/mdistiller mdistiller/models/cifar/wrn.py (both give the same numbers).
_COUNTS = {(16, 1): (180_916, 175_066), (16, 2): (703_284, 691_674),
           (40, 1): (569_780, 563_930), (40, 2): (2_255_156, 2_243_546)}


def _register(depth: int, k: int) -> None:
    name = f"wrn_{depth}_{k}"

    def build(num_classes: int, width: float = 1.0, in_channels: int = 3) -> nn.Module:
        check_args(num_classes, width, in_channels)
        return WideResNet(depth, k, num_classes, width, in_channels)

    c100, c10 = _COUNTS[(depth, k)]
    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"WRN-{depth}-{k} (Zagoruyko & Komodakis 2016): {(depth - 4) // 6} blocks per stage, "
        f"{16 * k}/{32 * k}/{64 * k} channels.\n\n"
        f"Parameters: {c100:,} at 100 classes ({c10:,} at 10), equal to ``{name}`` in "
        "HobbitLong/RepDistiller ``models/wrn.py`` and megvii-research/mdistiller "
        "``mdistiller/models/cifar/wrn.py``. ``width`` multiplies every channel count, stem included."
    )
    MODELS.register(name)(build)


for _depth, _k in _COUNTS:
    _register(_depth, _k)
