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

The connector (``kdsweep.core.methods.connectors.crd``) holds both projections (trained, weight decay as the student's weights), both banks
and the Z constants (buffers, saved in the run's checkpoint). It needs each batch's image indices
(``Batch.index``) and a bank the size of the training split.

Params: ``crd_weight``, ``ce_weight``, ``temperature`` (tau), ``momentum`` of the banks,
``negatives`` (K), ``embed_dim``. Published CIFAR-100 defaults (megvii-research/mdistiller
``mdistiller/engine/cfg.py``, CRD section): FEAT.DIM 128, NCE.K 16384, NCE.MOMENTUM 0.5,
NCE.TEMPERATURE 0.07, FEAT_WEIGHT 0.8, CE_WEIGHT 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.methods.base import Method, MethodParam, Terms, hard_ce, register
from kdsweep.core.methods.features import Features, FeatureShapes

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdsweep.core.methods.connectors.crd import CRDConnector

NCE_EPS = 1e-7  # as in the reference's ContrastLoss


def nce_loss(h: torch.Tensor, num_data: int) -> torch.Tensor:
    """[B, 1 + K] scores (the positive first) -> the batch mean of the NCE loss above."""
    import torch  # on use, so that declaring the method imports no torch (see methods/base.py)

    k = h.shape[1] - 1
    noise = k / num_data  # K * P_n
    pos = torch.log(h[:, 0] / (h[:, 0] + noise + NCE_EPS))
    neg = torch.log(noise / (h[:, 1:] + noise + NCE_EPS))
    return -(pos.sum() + neg.sum()) / h.shape[0]


def crd_connector(shapes: FeatureShapes, params: dict[str, float]) -> nn.Module:
    from kdsweep.core.methods.connectors.crd import CRDConnector  # on use: it subclasses nn.Module

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
    import torch.nn.functional as F

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
