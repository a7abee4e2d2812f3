"""``ce``: plain cross-entropy with the labels, no teacher; what baselines and teachers train with.

    loss = CE(softmax(z_s), y)        (with the run's label smoothing)

No params, no paper of its own: it is the "student trained alone" baseline of every KD paper since
Hinton et al., "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531, 2015), and the
loss teachers are trained with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.methods.base import Method, Terms, hard_ce, register

if TYPE_CHECKING:
    import torch


def ce_terms(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    params: dict[str, float],
    epoch: float | torch.Tensor,
    *,
    label_smoothing: float = 0.0,
) -> Terms:
    return {"ce": hard_ce(student_logits, targets, label_smoothing)}


CE = register(
    Method(
        name="ce",
        params=(),
        terms=ce_terms,
        needs_teacher=False,
        summary="cross-entropy with the labels only (no teacher): the baseline",
    )
)
