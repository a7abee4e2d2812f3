"""``kd``: Hinton et al., "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep Learning
Workshop (arXiv:1503.02531, 2015).

    kd = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))      (KL averaged over the batch)
    ce = (1 - alpha) * CE(softmax(z_s), y)

Params: ``alpha`` in [0, 1] weights the KD term (the CE term gets 1 - alpha; kdsweep never weights
CE with alpha); ``temperature`` T > 0 softens both distributions, and T^2 keeps the soft term's
gradient scale independent of T. Defaults alpha 0.9, T 4: mdistiller's CIFAR-100 KD config
(megvii-research/mdistiller ``mdistiller/engine/cfg.py``: KD.TEMPERATURE 4, KD_WEIGHT 0.9,
CE_WEIGHT 0.1). Bit-identical to ``kdsweep.core.losses.kd_loss`` for alpha > 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.methods.base import Method, MethodParam, Terms, hard_ce, register

if TYPE_CHECKING:
    import torch


def kd_terms(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor,
    params: dict[str, float],
    epoch: float | torch.Tensor,
    *,
    label_smoothing: float = 0.0,
) -> Terms:
    from kdsweep.core.losses import soft_kl  # torch, imported on use (see methods/base.py)

    alpha = params["alpha"]
    ce = hard_ce(student_logits, targets, label_smoothing)
    return {
        "kd": alpha * soft_kl(student_logits, teacher_logits, params["temperature"]),
        "ce": (1.0 - alpha) * ce,
    }


KD = register(
    Method(
        name="kd",
        params=(
            MethodParam("alpha", 0.9, 0.0, 1.0, help="weight of the KD term; CE gets 1 - alpha"),
            MethodParam("temperature", 4.0, 0.0, low_inclusive=False, help="softmax temperature T of the KD term"),
        ),
        terms=kd_terms,
        summary="Hinton KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE",
        # softmax(log p / T) of stored labels is the teacher's softmax(z / T) on its top k classes
        top_k_labels=True,
    )
)
