"""The data set registry, torch-free: names -> loaders, declared here and registered by ``core/datasets.py``.

A spec's ``data.dataset`` is checked against these names without importing torch; a new loader
registered with ``@DATASETS.register(name)`` declares its name (and module) here too.
"""

from __future__ import annotations

from kdsweep.core.registry import Registry

DATASETS = Registry("dataset", {"kdsweep.core.datasets": ("cifar10", "cifar100", "imagefolder"),
                                "kdsweep.core.formats": ("manifest", "hf_disk")})
