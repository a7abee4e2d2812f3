"""``reviewkd``: Chen, Liu, Zhao and Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021.

The student's stage features F_s^1..F_s^n and its penultimate embedding (as a 1 x 1 map, stage
n + 1) are fused from deep to shallow by attention-based fusion (ABF) blocks; each fused map U^j
is compared with the teacher's feature at the same stage by the hierarchical context loss (HCL):

    R^{n+1}      = conv1x1_bn(F_s^{n+1});   U^{n+1} = conv3x3_bn(resize(R^{n+1}, size_t^{n+1}))
    R^j          = a_0 * conv1x1_bn(F_s^j) + a_1 * nearest(R^{j+1}, size(F_s^j)),
                   (a_0, a_1) = sigmoid(conv1x1([conv1x1_bn(F_s^j), nearest(R^{j+1})]))
    U^j          = conv3x3_bn(nearest(R^j, size_t^j))
    HCL(U, F_t)  = (MSE(U, F_t) + sum_{l in 4,2,1; l < H} 2^-k MSE(pool_l(U), pool_l(F_t))) / (1 + sum 2^-k)
    review       = review_weight * min(epoch / warmup, 1) * sum_j HCL(U^j, F_t^j)
    ce           = ce_weight * CE(softmax(z_s), y)

k counts the pooled levels used so far (1, 2, 3), pool_l is adaptive average pooling to l x l;
conv1x1_bn maps to ``mid`` = min(512, channels of the deepest student stage) channels and
conv3x3_bn to the teacher's channels at that stage, so different widths and depths pair up (the
deepest stages of each network, :func:`kdsweep.core.methods.features.paired`).

The ABF blocks are the connector (``kdsweep.core.methods.connectors.reviewkd``; trained by the student's optimizer, saved in the checkpoint).
The reference code compares with the teacher's pre-activation stage outputs; kdsweep taps the
teacher's stage outputs as named (post-activation for the built-in families' defaults: name a
pre-activation layer in ``teacher.features`` to follow the reference exactly).

Params: ``review_weight``, ``warmup`` (epochs of linear warm-up of the review term), ``ce_weight``.
Published CIFAR-100 defaults (megvii-research/mdistiller ``mdistiller/engine/cfg.py``, REVIEWKD
section): REVIEWKD_WEIGHT 1, WARMUP_EPOCHS 20, CE_WEIGHT 1, MAX_MID_CHANNEL 512.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.methods.base import Method, MethodParam, Terms, hard_ce, register
from kdsweep.core.methods.dkd import warmup_factor
from kdsweep.core.methods.features import Features, FeatureShapes, paired

if TYPE_CHECKING:
    import torch
    from torch import nn


def as_map(e: torch.Tensor) -> torch.Tensor:
    return e.reshape(e.shape[0], -1, 1, 1)


def _stage_shapes(stages, embedding: int | None) -> list[tuple[int, ...]]:
    return [tuple(s) for s in stages] + ([(embedding, 1, 1)] if embedding is not None else [])


def reviewkd_connector(shapes: FeatureShapes, params: dict[str, float]) -> nn.Module:
    from kdsweep.core.methods.connectors.reviewkd import ReviewConnector  # on use: it subclasses nn.Module

    s, t = paired(_stage_shapes(shapes.student, shapes.student_embedding),
                  _stage_shapes(shapes.teacher, shapes.teacher_embedding))
    bad = [x for x in s + t if len(x) != 3]
    if bad:
        raise ValueError(f"reviewkd fuses feature maps (C, H, W); got {bad[0]}")
    return ReviewConnector(s, t)


def hcl(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Hierarchical context loss of one stage (see the module docstring)."""
    import torch.nn.functional as F  # on use, so that declaring the method imports no torch (see methods/base.py)

    loss = F.mse_loss(f_s, f_t)
    weight, total = 1.0, 1.0
    for level in (4, 2, 1):
        if level >= f_s.shape[-2]:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(f_s, level), F.adaptive_avg_pool2d(f_t, level))
        total += weight
    return loss / total


def reviewkd_terms(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    params: dict[str, float],
    epoch: float | torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    feats: Features,
) -> Terms:
    import torch

    s, t = paired([*feats.student, as_map(feats.student_embedding)], [*feats.teacher, as_map(feats.teacher_embedding)])
    fused = feats.connector([f.float() for f in s])
    review = sum((hcl(u.float(), f.float()) for u, f in zip(fused, t)), student_logits.new_zeros((), dtype=torch.float32))
    w = warmup_factor(epoch, params["warmup"])
    return {
        "ce": params["ce_weight"] * hard_ce(student_logits, targets, label_smoothing),
        "review": w * params["review_weight"] * review,
    }


REVIEWKD = register(
    Method(
        name="reviewkd",
        params=(
            MethodParam("review_weight", 1.0, 0.0, help="weight of the review term (HCL of the fused student maps)"),
            MethodParam("warmup", 20.0, 0.0, help="epochs of linear warm-up of the review term (0: none)"),
            MethodParam("ce_weight", 1.0, 0.0, help="weight of the cross-entropy term"),
        ),
        terms=reviewkd_terms,
        summary="Knowledge review: ce_weight * CE + review_weight * warm-up * sum_stages HCL(ABF-fused student, teacher)",
        taps=frozenset({"stages", "embedding"}),
        connector=reviewkd_connector,
    )
)
