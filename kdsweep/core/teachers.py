"""Where a student's soft targets come from during training.

The trainer asks a teacher source for the logits of each batch. An online source runs the
teacher network on the very views the student sees; other sources (a precomputed table of
every augmented view) can replace it without the trainer knowing.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class TeacherSource(Protocol):
    def __call__(self, batch) -> torch.Tensor:  # batch: kdsweep.core.loader.Batch
        ...

    def to(self, device: torch.device) -> "TeacherSource":
        ...


class OnlineTeacher:
    """Runs a frozen teacher network in eval mode on each batch (inside the trainer's autocast)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def to(self, device: torch.device, *, channels_last: bool = False) -> "OnlineTeacher":
        self.model.to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        return self

    @torch.no_grad()
    def __call__(self, batch) -> torch.Tensor:
        return self.model(batch.x)
