"""CRD's connector: projections, memory banks, Z constants and negative sampler (see ``methods/crd.py``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CRDConnector(nn.Module):
    """Projections, memory banks, Z constants and the negative sampler of one CRD run."""

    def __init__(self, student_dim: int, teacher_dim: int, labels: torch.Tensor, *, embed_dim: int,
                 negatives: int, temperature: float, momentum: float) -> None:
        super().__init__()
        self.embed_s = nn.Linear(student_dim, embed_dim)
        self.embed_t = nn.Linear(teacher_dim, embed_dim)
        self.negatives, self.temperature, self.momentum = negatives, temperature, momentum
        n = len(labels)
        self.num_data = n
        stdv = 1.0 / math.sqrt(embed_dim / 3)
        self.register_buffer("memory_s", torch.rand(n, embed_dim, device=labels.device) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(n, embed_dim, device=labels.device) * 2 * stdv - stdv)
        self.register_buffer("z", torch.full((2,), -1.0, device=labels.device))  # Z of (student, teacher) scores
        # other-class sampling without a host sync: images sorted by class, class c's block skipped
        labels = labels.long()
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.register_buffer("labels", labels, persistent=False)
        self.gen = torch.Generator(device=labels.device)
        self.gen.manual_seed(0)

    def begin_epoch(self, epoch: int, seed: int) -> None:
        self.gen.manual_seed(seed * 1_000_003 + epoch)

    def sample(self, index: torch.Tensor) -> torch.Tensor:
        """[B] image indices -> [B, 1 + K]: the image itself, then K images of other classes."""
        c = self.labels[index]
        others = self.num_data - self.class_count[c]  # images of other classes, per sample
        u = torch.rand(len(index), self.negatives, generator=self.gen, device=index.device)
        r = (u * others.unsqueeze(1)).long()
        r = torch.minimum(r, (others - 1).clamp(min=0).unsqueeze(1))
        start, count = self.class_start[c].unsqueeze(1), self.class_count[c].unsqueeze(1)
        pos = r + (r >= start) * count  # skip the sample's own class block
        return torch.cat([index.unsqueeze(1), self.order[pos]], dim=1)

    def scores(self, v: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor, which: int) -> torch.Tensor:
        """exp(<v, m[idx]> / tau) / Z, Z set from this batch on the first call (no host sync)."""
        w = memory[idx].detach()  # [B, 1 + K, D]
        out = torch.exp(torch.bmm(w, v.unsqueeze(2)).squeeze(2) / self.temperature)
        z = torch.where(self.z[which] < 0, out.detach().mean() * self.num_data, self.z[which])
        with torch.no_grad():
            self.z[which] = z
        return out / z

    @torch.no_grad()
    def update(self, memory: torch.Tensor, index: torch.Tensor, v: torch.Tensor) -> None:
        moved = memory[index] * self.momentum + v.detach() * (1 - self.momentum)
        memory.index_copy_(0, index, F.normalize(moved, dim=1))
