"""The distillation loss: the one formula, with alpha weighting the KD term.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE

KL is averaged over the batch (``batchmean``), which is the true KL divergence per example;
the T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al. 2015).
Some projects weight the hard loss with alpha instead: kdsweep never does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T), batch mean, scaled by T^2. Computed in float32."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (t * t)


def kd_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    alpha: float = 0.0,
    temperature: float = 4.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``alpha * T^2 * KL + (1 - alpha) * CE``; with ``alpha == 0`` the teacher may be None."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} must lie in [0, 1] (it weights the KD term)")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    ce = F.cross_entropy(student_logits.float(), targets, label_smoothing=label_smoothing)
    if alpha == 0.0:
        return ce
    if teacher_logits is None:
        raise ValueError(f"alpha={alpha!r} needs teacher logits")
    return alpha * soft_kl(student_logits, teacher_logits, temperature) + (1.0 - alpha) * ce
