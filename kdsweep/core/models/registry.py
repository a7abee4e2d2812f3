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
    "kdsweep.core.models.torchvision_resnet": ("torchvision_resnet18", "torchvision_resnet34"),
    # the CIFAR-100 KD benchmark zoo
    "kdsweep.core.models.resnet_x4": ("resnet8x4", "resnet32x4"),
    "kdsweep.core.models.wide_resnet": ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"),
    "kdsweep.core.models.vgg": ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19"),
    "kdsweep.core.models.resnet_bottleneck": ("resnet50",),
    "kdsweep.core.models.mobilenetv2": ("mobilenetv2",),
    "kdsweep.core.models.shufflenet_v1": ("shufflenetv1",),
    "kdsweep.core.models.shufflenet_v2": ("shufflenetv2",),
}
# built-ins whose channel counts are fixed: a width other than 1 is refused at validation
FIXED_WIDTH = frozenset({"torchvision_resnet18", "torchvision_resnet34"})

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", FAMILIES)
