"""``fitnet``: Romero, Ballas, Kahou, Chassang, Gatta and Bengio, "FitNets: Hints for Thin Deep
Nets", ICLR 2015.

The student's feature at a middle stage (the "guided layer") is mapped by a trainable regressor r
onto the shape of the teacher's feature at its middle stage (the "hint"), and pulled towards it:

    hint = hint_weight * mean((r(F_s) - F_t)^2)        (MSE over batch, channels and positions)
    ce   = ce_weight * CE(softmax(z_s), y)

The paper trains the hint first and the whole student with KD after; like mdistiller (and the
DKD/ReviewKD papers' FitNet rows) kdsweep trains both terms together from the first step.

The regressor is the method's connector (``kdsweep.core.methods.features``; its module
``Regressor`` is in ``kdsweep.core.methods.connectors.fitnet``), trained by the student's
optimizer: conv -> BatchNorm -> ReLU, with the conv chosen from the two spatial sizes as in
mdistiller's ``ConvReg``: equal sizes a 1x1 conv; a student map twice as large a 3x3 stride-2 conv;
half as large a 4x4 stride-2 transposed conv; otherwise larger a (1 + H_s - H_t) x (1 + W_s - W_t)
conv, and smaller a 1x1 conv followed by bilinear interpolation to the teacher's size. The
channels go from the student's to the teacher's in that conv.

Params: ``hint_weight`` weights the hint, ``ce_weight`` the cross-entropy. Published CIFAR-100
defaults (megvii-research/mdistiller ``mdistiller/engine/cfg.py``, FITNET section): HINT_LAYER 2 of
the stem + 3 stages (the middle stage; here the middle of the tapped stages, :func:`middle`),
FEAT_WEIGHT 100, CE_WEIGHT 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.methods.base import Method, MethodParam, Terms, hard_ce, register
from kdsweep.core.methods.features import Features, FeatureShapes, middle

if TYPE_CHECKING:
    import torch
    from torch import nn


def fitnet_connector(shapes: FeatureShapes, params: dict[str, float]) -> nn.Module:
    from kdsweep.core.methods.connectors.fitnet import Regressor  # on use: it subclasses nn.Module

    if len(shapes.student[middle(len(shapes.student))]) != 3 or len(shapes.teacher[middle(len(shapes.teacher))]) != 3:
        raise ValueError("fitnet's hint needs feature maps (C, H, W) at the middle stages; got "
                         f"{shapes.student[middle(len(shapes.student))]} and {shapes.teacher[middle(len(shapes.teacher))]}")
    return Regressor(shapes.student[middle(len(shapes.student))], shapes.teacher[middle(len(shapes.teacher))])


def fitnet_terms(
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

    f_s = feats.student[middle(len(feats.student))].float()
    f_t = feats.teacher[middle(len(feats.teacher))].float()
    regressed = feats.connector(f_s).float()
    return {
        "ce": params["ce_weight"] * hard_ce(student_logits, targets, label_smoothing),
        "hint": params["hint_weight"] * F.mse_loss(regressed, f_t),
    }


FITNET = register(
    Method(
        name="fitnet",
        params=(
            MethodParam("hint_weight", 100.0, 0.0, help="weight of the hint: MSE of the regressed student feature"),
            MethodParam("ce_weight", 1.0, 0.0, help="weight of the cross-entropy term"),
        ),
        terms=fitnet_terms,
        summary="FitNet: ce_weight * CE + hint_weight * MSE(regressor(student middle stage), teacher middle stage)",
        taps=frozenset({"stages"}),
        connector=fitnet_connector,
    )
)
