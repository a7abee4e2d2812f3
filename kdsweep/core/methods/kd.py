"""kd: Hinton et al. 2015."""
import torch.nn.functional as F

from kdsweep.core.losses import soft_kl
from kdsweep.core.methods.base import Method, MethodParam, register


def _terms(student, targets, teacher, params, epoch, *, label_smoothing=0.0):
    alpha = params["alpha"]
    ce = F.cross_entropy(student.float(), targets, label_smoothing=label_smoothing)
    return {"kd": alpha * soft_kl(student, teacher, params["temperature"]), "ce": (1.0 - alpha) * ce}


KD = register(Method("kd", (MethodParam("alpha", 0.9, 0, 1), MethodParam("temperature", 4.0, 0, None, low_inclusive=False)),
                     _terms, summary="Hinton's KD"))
