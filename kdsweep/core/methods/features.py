"""What a feature method reads beside the logits, and the shapes its connector is built from.

A feature method (``Method.taps`` not empty) gets a :class:`Features` in every step: the student's
and the teacher's tapped stage outputs and penultimate embeddings (``kdsweep.core.taps``), the
batch's image indices, and its connector: the trainable module it built at run start from a
:class:`FeatureShapes` (``Method.connector``). The connector is trained by the student's optimizer,
saved in the run's checkpoint and never exported with the student.

Student and teacher may tap different numbers of stages (different architectures): methods that
compare stage by stage pair the deepest ones (:func:`paired`), as the papers pair "the last k
groups" of differently deep networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch
    from torch import nn

TAPS = ("stages", "embedding", "index")  # what a method may ask for


@dataclass(frozen=True)
class FeatureShapes:
    """Shapes (without the batch dim) of the tapped features, for building a connector."""

    student: tuple[tuple[int, ...], ...]  # each tapped student stage, e.g. (64, 8, 8)
    teacher: tuple[tuple[int, ...], ...]
    student_embedding: int | None  # width of the penultimate embedding, when tapped
    teacher_embedding: int | None
    num_train: int  # images in the training split (CRD's memory bank has one row per image)
    labels: torch.Tensor | None = None  # int64 [num_train]: the training split's labels (CRD's negatives)


@dataclass
class Features:
    """One step's features: lists shallow to deep, embeddings ``[B, D]``, indices ``[B]``."""

    student: list[torch.Tensor]
    teacher: list[torch.Tensor]
    student_embedding: torch.Tensor | None = None
    teacher_embedding: torch.Tensor | None = None
    index: torch.Tensor | None = None
    connector: nn.Module | None = None


def paired(student: Sequence, teacher: Sequence) -> tuple[list, list]:
    """The deepest ``min(len)`` entries of each, in the same shallow-to-deep order."""
    k = min(len(student), len(teacher))
    return list(student[len(student) - k:]), list(teacher[len(teacher) - k:])


def middle(n: int) -> int:
    """The index of the middle stage of ``n`` (FitNet's hint: the 2nd of 3 or of 4 stages)."""
    return (n - 1) // 2
