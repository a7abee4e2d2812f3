"""ce: plain cross-entropy, no teacher."""
import torch.nn.functional as F

from kdsweep.core.methods.base import Method, register


def _terms(student, targets, teacher, params, epoch, *, label_smoothing=0.0):
    return {"ce": F.cross_entropy(student.float(), targets, label_smoothing=label_smoothing)}


CE = register(Method("ce", (), _terms, needs_teacher=False, summary="cross-entropy on the labels"))
