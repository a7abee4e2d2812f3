"""FitNet's connector: the regressor from the student's middle stage to the teacher's (see ``methods/fitnet.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Regressor(nn.Module):
    """Maps a student feature map ``(C_s, H_s, W_s)`` onto a teacher one ``(C_t, H_t, W_t)``."""

    def __init__(self, student: tuple[int, ...], teacher: tuple[int, ...]) -> None:
        super().__init__()
        (cs, hs, ws), (ct, ht, wt) = student[:3], teacher[:3]
        self.size = (ht, wt)
        self.resize = False
        if (hs, ws) == (ht, wt):
            self.conv: nn.Module = nn.Conv2d(cs, ct, 1, bias=False)
        elif (hs, ws) == (2 * ht, 2 * wt):
            self.conv = nn.Conv2d(cs, ct, 3, stride=2, padding=1, bias=False)
        elif (2 * hs, 2 * ws) == (ht, wt):
            self.conv = nn.ConvTranspose2d(cs, ct, 4, stride=2, padding=1, bias=False)
        elif hs >= ht and ws >= wt:
            self.conv = nn.Conv2d(cs, ct, (1 + hs - ht, 1 + ws - wt), bias=False)
        else:
            self.conv, self.resize = nn.Conv2d(cs, ct, 1, bias=False), True
        self.bn = nn.BatchNorm2d(ct)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.resize:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return F.relu(self.bn(x))
