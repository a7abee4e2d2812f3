"""``crd``: Tian, Krishnan and Isola, "Contrastive Representation Distillation", ICLR 2020.

Student and teacher penultimate embeddings are each projected by a trainable linear layer to
``embed_dim`` and L2-normalised (g_s, g_t). Two memory banks hold one normalised embedding per
training image, m_s (student side) and m_t (teacher side). For a batch sample i with image index
n_i and K negatives drawn from images of other classes:

    h(v, m) = exp(<v, m> / tau) / Z                     Z = N * mean of exp(<v, m> / tau) over the first batch
    P_n     = 1 / N                                     (the noise distribution: uniform over the N images)
    nce(i)  = -log(h_pos / (h_pos + K P_n)) - sum_k log(K P_n / (h_k + K P_n))
    crd     = crd_weight * (mean_i nce(g_s(i) against m_t) + mean_i nce(g_t(i) against m_s))
    ce      = ce_weight * CE(softmax(z_s), y)

where for "g_s against m_t" the positive is m_t[n_i] and the negatives m_t[negatives of i] (and
symmetrically). After the loss, the banks move towards the batch's embeddings:
m[n_i] <- normalise(momentum * m[n_i] + (1 - momentum) * g(i)). The banks start uniform in
+-1/sqrt(embed_dim / 3) and Z is fixed on the first batch, as in the reference code (RepDistiller
``crd/memory.py``, ``crd/criterion.py``). The negatives are drawn uniformly, with replacement,
among the images of the other classes (the reference's ``mode: exact`` sampler), from a generator
reseeded from (seed, epoch) at each epoch start, so a resumed run draws what it would have drawn.

The connector holds both projections (trained, weight decay as the student's weights), both banks
and the Z constants (buffers, saved in the run's checkpoint). It needs each batch's image indices
(``Batch.index``) and a bank the size of the training split.

Params: ``crd_weight``, ``ce_weight``, ``temperature`` (tau), ``momentum`` of the banks,
``negatives`` (K), ``embed_dim``. Published CIFAR-100 defaults (megvii-research/mdistiller
``mdistiller/engine/cfg.py``, CRD section): FEAT.DIM 128, NCE.K 16384, NCE.MOMENTUM 0.5,
NCE.TEMPERATURE 0.07, FEAT_WEIGHT 0.8, CE_WEIGHT 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdsweep.core.methods.base import Method, MethodParam, Terms, hard_ce, register
from kdsweep.core.methods.features import Features, FeatureShapes

NCE_EPS = 1e-7  # as in the reference's ContrastLoss


def nce_loss(h: torch.Tensor, num_data: int) -> torch.Tensor:
    """[B, 1 + K] scores (the positive first) -> the batch mean of the NCE loss above."""
    k = h.shape[1] - 1
    noise = k / num_data  # K * P_n
    pos = torch.log(h[:, 0] / (h[:, 0] + noise + NCE_EPS))
    neg = torch.log(noise / (h[:, 1:] + noise + NCE_EPS))
    return -(pos.sum() + neg.sum()) / h.shape[0]


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


def crd_connector(shapes: FeatureShapes, params: dict[str, float]) -> nn.Module:
    return CRDConnector(shapes.student_embedding, shapes.teacher_embedding, shapes.labels,
                        embed_dim=int(params["embed_dim"]), negatives=int(params["negatives"]),
                        temperature=params["temperature"], momentum=params["momentum"])


def crd_terms(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    params: dict[str, float],
    epoch: float | torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    feats: Features,
) -> Terms:
    crd: CRDConnector = feats.connector  # type: ignore[assignment]
    g_s = F.normalize(crd.embed_s(feats.student_embedding.float()), dim=1)
    g_t = F.normalize(crd.embed_t(feats.teacher_embedding.float()), dim=1)
    idx = crd.sample(feats.index)
    h_s = crd.scores(g_s, crd.memory_t, idx, 0)  # the student's embedding against the teacher's bank
    h_t = crd.scores(g_t, crd.memory_s, idx, 1)  # the teacher's embedding against the student's bank
    loss = nce_loss(h_s, crd.num_data) + nce_loss(h_t, crd.num_data)
    crd.update(crd.memory_s, feats.index, g_s)
    crd.update(crd.memory_t, feats.index, g_t)
    return {
        "ce": params["ce_weight"] * hard_ce(student_logits, targets, label_smoothing),
        "crd": params["crd_weight"] * loss,
    }


CRD = register(
    Method(
        name="crd",
        params=(
            MethodParam("crd_weight", 0.8, 0.0, help="weight of the contrastive (NCE) term"),
            MethodParam("ce_weight", 1.0, 0.0, help="weight of the cross-entropy term"),
            MethodParam("temperature", 0.07, 0.0, low_inclusive=False, help="NCE temperature tau of the scores"),
            MethodParam("momentum", 0.5, 0.0, 1.0, high_inclusive=False, help="momentum of the memory banks' update"),
            MethodParam("negatives", 16384.0, 1.0, help="K: negatives per sample drawn from the memory bank"),
            MethodParam("embed_dim", 128.0, 1.0, help="width of the projected, normalised embeddings"),
        ),
        terms=crd_terms,
        summary="Contrastive representation distillation: ce_weight * CE + crd_weight * NCE against memory banks",
        taps=frozenset({"embedding", "index"}),
        connector=crd_connector,
    )
)
