"""The model registry: built-in names -> builders ``(num_classes, width=1.0, in_channels=3)``.

Torch-free: each family file's names are declared here, so a spec's arch is checked without
importing torch (``kdsweep study validate``); the family file is imported on the first build.
A new family file adds its module and names to ``FAMILIES`` (tests/test_registry.py checks the
declared names are exactly the registered ones).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from kdsweep.core.registry import Registry

if TYPE_CHECKING:
    from torch import nn

FAMILIES = {
    "kdsweep.core.models.plain_cnn": ("teachernet12", "cnn_teacher", "cnn_student", "cnn5"),
    "kdsweep.core.models.resnet": ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                                   "resnet110", "resnet18"),
    "kdsweep.core.models.torchvision_resnet": ("torchvision_resnet18",),
}

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", FAMILIES)
