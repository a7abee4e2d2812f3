"""ReviewKD's connector: the attention-based fusion (ABF) blocks (see ``methods/reviewkd.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_MID = 512  # MAX_MID_CHANNEL: the fused maps' width is min(this, the deepest student stage's channels)


class ABF(nn.Module):
    """One attention-based fusion block: this stage's feature fused with the deeper residual."""

    def __init__(self, c_in: int, mid: int, c_out: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.att = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # as the reference
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int]):
        x = self.conv1(x)
        if self.att is not None and residual is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            a = self.att(torch.cat([x, residual], dim=1))
            x = x * a[:, :1] + residual * a[:, 1:]
        fused = x
        if x.shape[-2:] != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), fused


class ReviewConnector(nn.Module):
    """The ABF blocks, deepest first; maps the student's stages (+ embedding) to the teacher's shapes."""

    def __init__(self, student: list[tuple[int, ...]], teacher: list[tuple[int, ...]]) -> None:
        super().__init__()
        mid = min(MAX_MID, student[-1][0])
        n = len(student)
        self.out_sizes = [tuple(t[1:3]) if len(t) == 3 else (1, 1) for t in teacher][::-1]
        self.blocks = nn.ModuleList(
            ABF(s[0], mid, t[0], fuse=i < n - 1) for i, (s, t) in enumerate(zip(student, teacher)))[::-1]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student maps shallow to deep -> fused maps shallow to deep, in the teacher's shapes."""
        out, residual = [], None
        for x, block, size in zip(feats[::-1], self.blocks, self.out_sizes):
            y, residual = block(x, residual, size)
            out.insert(0, y)
        return out
