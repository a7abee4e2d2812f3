"""``dkd``: Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge Distillation", CVPR 2022.

With p = softmax(z / T) over all C classes, b = [p_y, 1 - p_y] (target vs the rest) and
q = softmax over the C - 1 non-target classes (p renormalised without class y):

    TCKD = T^2 * KL(b_t || b_s)          (binary KL, target-class knowledge)
    NCKD = T^2 * KL(q_t || q_s)          (non-target-class knowledge)
    ce   = CE(softmax(z_s), y)           (weight 1)
    tckd = w(epoch) * alpha * TCKD
    nckd = w(epoch) * beta  * NCKD,      w(epoch) = min(epoch / warmup, 1)

each KL averaged over the batch. Classical KD splits as KD = TCKD + (1 - p_y^t) * NCKD per sample;
DKD frees NCKD from the (1 - p_y^t) factor, which is small exactly when the teacher is confident.

Params: ``alpha`` weights TCKD, ``beta`` weights NCKD, ``temperature`` T, ``warmup`` the number of
epochs over which the KD part ramps linearly up to full weight (0: none). Published CIFAR-100
defaults (megvii-research/mdistiller ``mdistiller/engine/cfg.py``, DKD section): CE_WEIGHT 1,
ALPHA 1, BETA 8, T 4, WARMUP 20; some pairs override beta (``configs/cifar100/dkd/vgg13_mv2.yaml``:
BETA 6). The reference's epoch is 1-based, as here.

Computed from log-softmax: log(1 - p_y) is a logsumexp over the non-target log-probabilities and
log q = log p - log(1 - p_y), so neither saturated targets nor the reference's -1000 masking
offset can produce log(0) or a NaN gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.methods.base import Method, MethodParam, Terms, hard_ce, register

if TYPE_CHECKING:
    import torch


def warmup_factor(epoch: float | torch.Tensor, warmup: float) -> float | torch.Tensor:
    """min(epoch / warmup, 1) for a Python or a device-tensor epoch, without a host sync."""
    import torch  # on use, so that declaring the method imports no torch (see methods/base.py)

    if warmup <= 0:
        return 1.0
    if isinstance(epoch, torch.Tensor):
        return (epoch.float() / warmup).clamp(max=1.0)
    return min(epoch / warmup, 1.0)


def decoupled_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD), unweighted and without T^2; float32."""
    import torch

    t = temperature
    log_ps = torch.log_softmax(student_logits.float() / t, dim=1)
    log_pt = torch.log_softmax(teacher_logits.float() / t, dim=1)
    target = torch.zeros_like(log_ps, dtype=torch.bool).scatter_(1, targets.view(-1, 1), True)
    idx = targets.view(-1, 1)
    # log p_y and log(1 - p_y) for both; -inf in the logsumexp contributes exp(-inf) = 0, gradient 0
    s_in, t_in = log_ps.gather(1, idx).squeeze(1), log_pt.gather(1, idx).squeeze(1)
    s_out = log_ps.masked_fill(target, float("-inf")).logsumexp(1)
    t_out = log_pt.masked_fill(target, float("-inf")).logsumexp(1)
    tckd = t_in.exp() * (t_in - s_in) + t_out.exp() * (t_out - s_out)
    # log of the renormalised non-target distribution; the target entry is set to 0 (not -inf, and
    # not left as log p_y - log(1 - p_y), whose exp overflows when the target saturates), so it adds
    # exp(0) * (0 - 0) = 0 and no inf or NaN reaches the backward pass
    log_qs = (log_ps - s_out.unsqueeze(1)).masked_fill(target, 0.0)
    log_qt = (log_pt - t_out.unsqueeze(1)).masked_fill(target, 0.0)
    nckd = (log_qt.exp() * (log_qt - log_qs)).sum(1)
    return tckd, nckd


def dkd_terms(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor,
    params: dict[str, float],
    epoch: float | torch.Tensor,
    *,
    label_smoothing: float = 0.0,
) -> Terms:
    t = params["temperature"]
    tckd, nckd = decoupled_kl(student_logits, teacher_logits, targets, t)
    w = warmup_factor(epoch, params["warmup"])
    return {
        "ce": hard_ce(student_logits, targets, label_smoothing),
        "tckd": w * (params["alpha"] * t * t) * tckd.mean(),
        "nckd": w * (params["beta"] * t * t) * nckd.mean(),
    }


DKD = register(
    Method(
        name="dkd",
        params=(
            MethodParam("alpha", 1.0, 0.0, help="weight of TCKD, the target-vs-rest binary KL"),
            MethodParam("beta", 8.0, 0.0, help="weight of NCKD, the KL among the non-target classes"),
            MethodParam("temperature", 4.0, 0.0, low_inclusive=False, help="softmax temperature T of both KLs"),
            MethodParam("warmup", 20.0, 0.0, help="epochs of linear warm-up of the KD part (0: none)"),
        ),
        terms=dkd_terms,
        summary="Decoupled KD: CE + alpha * TCKD + beta * NCKD, warmed up over `warmup` epochs",
    )
)
