"""``at`` (attention transfer), Zagoruyko and Komodakis, "Paying More Attention to Attention: Improving the Performance
of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

A stage's spatial attention map is the channel mean of its activations to the power p, flattened
and L2-normalised per sample; the student's maps are pulled towards the teacher's at each paired
stage j (the deepest stages of each network, :func:`kdsweep.core.methods.features.paired`):

    Q(F)  = vec(mean_c |F_c|^p) / || vec(mean_c |F_c|^p) ||_2
    at    = at_weight * sum_j mean_{b, positions} (Q(F_s^j) - Q(F_t^j))^2
    ce    = ce_weight * CE(softmax(z_s), y)

The stage outputs are post-ReLU, so |F|^p = F^p for the paper's p = 2. Where a student map is
larger than the teacher's (or smaller) the larger is average-pooled to the smaller's size first, as
RepDistiller's ``Attention`` does. No connector: the maps have no channels left to match.

Params: ``at_weight`` (beta) weights the attention term, ``p`` is the power, ``ce_weight`` the
cross-entropy. Published CIFAR-100 defaults (megvii-research/mdistiller ``mdistiller/engine/cfg.py``,
AT section): P 2, FEAT_WEIGHT 1000, CE_WEIGHT 1, over the stage outputs after the stem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kdsweep.core.methods.base import Method, MethodParam, Terms, hard_ce, register
from kdsweep.core.methods.features import Features, paired

if TYPE_CHECKING:
    import torch


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W]: the L2-normalised channel mean of |f|^p."""
    import torch.nn.functional as F  # on use, so that declaring the method imports no torch (see methods/base.py)

    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


def same_size(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch.nn.functional as F

    hs, ht = f_s.shape[-2:], f_t.shape[-2:]
    if hs == ht:
        return f_s, f_t
    if hs[0] * hs[1] > ht[0] * ht[1]:
        return F.adaptive_avg_pool2d(f_s, tuple(ht)), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, tuple(hs))


def at_terms(
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

    p = params["p"]
    total = student_logits.new_zeros((), dtype=torch.float32)
    for f_s, f_t in zip(*paired(feats.student, feats.teacher)):
        f_s, f_t = same_size(f_s, f_t)
        total = total + (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
    return {
        "ce": params["ce_weight"] * hard_ce(student_logits, targets, label_smoothing),
        "at": params["at_weight"] * total,
    }


AT = register(
    Method(
        name="at",
        params=(
            MethodParam("at_weight", 1000.0, 0.0, help="weight (beta) of the attention-map distance, summed over stages"),
            MethodParam("p", 2.0, 0.0, low_inclusive=False, help="power of the activations in the attention map"),
            MethodParam("ce_weight", 1.0, 0.0, help="weight of the cross-entropy term"),
        ),
        terms=at_terms,
        summary="Attention transfer: ce_weight * CE + at_weight * sum_stages mean (Q_s - Q_t)^2, Q = normalised mean_c F^p",
        taps=frozenset({"stages"}),
    )
)
