"""``dist``: Huang, You, Wang, Qian and Xu, "Knowledge Distillation from A Stronger Teacher",
NeurIPS 2022 (DIST: match relations, not exact probabilities).

With Y = softmax(z / T) for the B x C batch of student (Y_s) and teacher (Y_t) logits and the
Pearson distance d(u, v) = 1 - corr(u, v):

    inter = beta  * T^2 * mean_i d(Y_s[i, :], Y_t[i, :])     (each sample's ranking of the classes)
    intra = gamma * T^2 * mean_j d(Y_s[:, j], Y_t[:, j])     (each class's ranking of the samples)
    ce    = CE(softmax(z_s), y)                              (weight 1)

corr(u, v) = <u - mean u, v - mean v> / (|u - mean u| |v - mean v| + 1e-8), the reference's guard
against constant vectors (e.g. the intra term of a batch of one). A correlation ignores shifts and
positive scales, so the student may be less confident than a much stronger teacher as long as it
orders classes and samples the same way; KL asks for the exact distribution.

Params: ``beta`` weights the inter-class relation, ``gamma`` the intra-class relation,
``temperature`` is T. Published CIFAR-100 setting (the authors' classification code, hunto/DIST_KD,
also shipped as hunto/image_classification_sota and hunto/LocalMamba ``classification/``:
``lib/models/losses/kd_loss.py`` ``dist_t4`` = DIST(beta=1, gamma=1, tau=4) scaled by
``kd_loss_weight: 2`` with ``ori_loss_weight: 1`` in ``configs/strategies/distill/dist_cifar.yaml``):
beta 2, gamma 2, T 4, CE weight 1. (On ImageNet the paper uses beta = gamma = 1, T = 1.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.methods.base import Method, MethodParam, Terms, hard_ce, register

if TYPE_CHECKING:
    import torch

EPS = 1e-8  # as in the reference's cosine similarity


def pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean over the other dim of 1 - corr(a, b) taken along ``dim``."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    corr = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + EPS)
    return 1.0 - corr.mean()


def dist_terms(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor,
    params: dict[str, float],
    epoch: float | torch.Tensor,
    *,
    label_smoothing: float = 0.0,
) -> Terms:
    import torch  # on use, so that declaring the method imports no torch (see methods/base.py)

    t = params["temperature"]
    y_s = torch.softmax(student_logits.float() / t, dim=1)
    y_t = torch.softmax(teacher_logits.float() / t, dim=1)
    return {
        "ce": hard_ce(student_logits, targets, label_smoothing),
        "inter": (params["beta"] * t * t) * pearson_distance(y_s, y_t, dim=1),
        "intra": (params["gamma"] * t * t) * pearson_distance(y_s, y_t, dim=0),
    }


DIST = register(
    Method(
        name="dist",
        params=(
            MethodParam("beta", 2.0, 0.0, help="weight of the inter-class relation (per-sample Pearson distance)"),
            MethodParam("gamma", 2.0, 0.0, help="weight of the intra-class relation (per-class Pearson distance)"),
            MethodParam("temperature", 4.0, 0.0, low_inclusive=False, help="softmax temperature T of both relations"),
        ),
        terms=dist_terms,
        summary="DIST: CE + beta * inter-class + gamma * intra-class Pearson distance of softmax(./T)",
    )
)
