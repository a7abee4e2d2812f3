"""``lskd``: Sun, Ren, Li, Wang and Cao, "Logit Standardization in Knowledge Distillation",
CVPR 2024 (KD with each sample's logits z-scored before the temperature softmax).

    Z(z) = (z - mean(z)) / (std(z) + 1e-7)          per sample, over the classes
    kd   = kd_weight * T^2 * KL(softmax(Z(z_t) / T) || softmax(Z(z_s) / T))   (batch mean)
    ce   = ce_weight * CE(softmax(z_s), y)           (raw logits, with the run's label smoothing)

Z makes the KD term invariant to a per-sample shift and positive scale of either logit vector:
the student only has to match the teacher's logit *relations*, not their magnitude, and T becomes a
"base" temperature on a unit-variance scale. std is the sample std (Bessel-corrected, as in the
reference code, ``torch.std``; the paper writes the population std, a factor sqrt(C / (C - 1)) on T).

Params: ``temperature`` (base temperature T), ``kd_weight`` weights the KD term, ``ce_weight`` the
CE term. Published CIFAR-100 settings (sunshangquan/logit-standardization-KD: ``tools/train.py``
``--base-temp 2 --kd-weight 9`` as given in its README for KD+ours; ``mdistiller/engine/cfg.py``
KD.LOSS.CE_WEIGHT 1; ``mdistiller/distillers/KD.py`` ``normalize`` with eps 1e-7): T 2, kd_weight 9,
ce_weight 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.methods.base import Method, MethodParam, Terms, hard_ce, register

if TYPE_CHECKING:
    import torch

EPS = 1e-7  # added to the std, as in the reference; keeps constant logits finite


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Each row z-scored: (z - mean) / (std + eps), in float32."""
    z = logits.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + EPS)


def lskd_terms(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor,
    params: dict[str, float],
    epoch: float | torch.Tensor,
    *,
    label_smoothing: float = 0.0,
) -> Terms:
    import torch.nn.functional as F  # on use, so that declaring the method imports no torch (see methods/base.py)

    t = params["temperature"]
    log_ps = F.log_softmax(standardize(student_logits) / t, dim=1)
    log_pt = F.log_softmax(standardize(teacher_logits) / t, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
    return {
        "kd": (params["kd_weight"] * t * t) * kl,
        "ce": params["ce_weight"] * hard_ce(student_logits, targets, label_smoothing),
    }


LSKD = register(
    Method(
        name="lskd",
        params=(
            MethodParam("temperature", 2.0, 0.0, low_inclusive=False, help="base temperature T on z-scored logits"),
            MethodParam("kd_weight", 9.0, 0.0, help="weight of the KD term on standardised logits"),
            MethodParam("ce_weight", 1.0, 0.0, help="weight of the cross-entropy term"),
        ),
        terms=lskd_terms,
        summary="KD on per-sample z-scored logits: kd_weight * T^2 * KL + ce_weight * CE",
    )
)
