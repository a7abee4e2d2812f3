"""``rkd``: Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR 2019.

The student matches the teacher's relations between the samples of a batch, computed on the
penultimate embeddings e (the classifier's input) of each network, whatever their widths:

    psi_D(i, j)    = ||e_i - e_j||_2 / mu,   mu = mean over the B(B-1) pairs i != j of ||e_i - e_j||_2
    psi_A(i, j, k) = < (e_i - e_j) / ||e_i - e_j||, (e_k - e_j) / ||e_k - e_j|| >
    dist  = distance_weight * mean_{i,j} l_delta(psi_D^s(i, j), psi_D^t(i, j))        (all B^2 pairs)
    angle = angle_weight    * mean_{i,j,k} l_delta(psi_A^s(i, j, k), psi_A^t(i, j, k)) (all B^3 triplets)
    ce    = ce_weight * CE(softmax(z_s), y)

l_delta is the Huber loss with delta 1 (``smooth_l1_loss``). Distances are taken as
sqrt(max(|e_i|^2 + |e_j|^2 - 2 e_i.e_j, 1e-12)) off the diagonal and 0 on it, as in the reference
code (the floor keeps the gradient of sqrt finite); mu is their mean over the off-diagonal pairs.
A pair with e_i = e_j gives an angle vector of zeros (``F.normalize``'s floor), as in the reference.
No connector: relations are independent of the embeddings' widths.

Params: ``distance_weight``, ``angle_weight``, ``ce_weight``. Published CIFAR-100 defaults
(megvii-research/mdistiller ``mdistiller/engine/cfg.py``, RKD section): DISTANCE_WEIGHT 25,
ANGLE_WEIGHT 50, CE_WEIGHT 1, on the pooled (penultimate) features.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.methods.base import Method, MethodParam, Terms, hard_ce, register
from kdsweep.core.methods.features import Features

if TYPE_CHECKING:
    import torch

EPS = 1e-12  # floor of the squared distance, as in the reference's pdist


def normalised_distances(e: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, B] pairwise Euclidean distances divided by their off-diagonal mean."""
    import torch  # on use, so that declaring the method imports no torch (see methods/base.py)

    e = e.float()
    sq = e.pow(2).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=EPS)
    b = e.shape[0]
    off = 1.0 - torch.eye(b, device=e.device, dtype=e.dtype)
    d = d2.sqrt() * off
    # the mean over i != j, without a data-dependent mask (no host sync); a batch of one has no pairs
    return d / (d.sum() / max(b * (b - 1), 1)).clamp(min=EPS)


def angles(e: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, B, B]: cosine of the angle at j between e_i and e_k."""
    import torch
    import torch.nn.functional as F

    e = e.float()
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i, :] = unit(e_i - e_j)
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_terms(
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

    e_s, e_t = feats.student_embedding, feats.teacher_embedding.detach()
    dist = F.smooth_l1_loss(normalised_distances(e_s), normalised_distances(e_t))
    angle = F.smooth_l1_loss(angles(e_s), angles(e_t))
    return {
        "ce": params["ce_weight"] * hard_ce(student_logits, targets, label_smoothing),
        "dist": params["distance_weight"] * dist,
        "angle": params["angle_weight"] * angle,
    }


RKD = register(
    Method(
        name="rkd",
        params=(
            MethodParam("distance_weight", 25.0, 0.0, help="weight of the distance relation (Huber on normalised distances)"),
            MethodParam("angle_weight", 50.0, 0.0, help="weight of the angle relation (Huber on triplet angle cosines)"),
            MethodParam("ce_weight", 1.0, 0.0, help="weight of the cross-entropy term"),
        ),
        terms=rkd_terms,
        summary="Relational KD: ce_weight * CE + distance_weight * Huber(psi_D) + angle_weight * Huber(psi_A) on embeddings",
        taps=frozenset({"embedding"}),
    )
)
