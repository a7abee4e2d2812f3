"""The model registry: built-in names -> builders ``(num_classes, width=1.0, in_channels=3)``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from kdsweep.core.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
