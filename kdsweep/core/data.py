"""Where data comes from: read (``datasets``), download, or generate; and how it reaches the GPU (``loader``).

Import data names from here; the readers and the loader live in their own modules to stay small.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdsweep.core.datasets import DATASETS, ImageSet, load_dataset, make_imageset
from kdsweep.core import formats as _formats  # noqa: F401 - registers manifest and hf_disk in DATASETS
from kdsweep.core.loader import Batch, DeviceLoader, augment, num_views, offsets_to_view, view_to_offsets
from kdsweep.errors import DataError

__all__ = [
    "DATASETS", "ImageSet", "load_dataset", "make_imageset", "download_dataset", "synthetic_imageset",
    "Batch", "DeviceLoader", "augment", "num_views", "offsets_to_view", "view_to_offsets",
]

IMAGEWOOF_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz"


def download_dataset(name: str, root: Path | str) -> Path:
    """Fetch ``name`` into ``root`` (the only networked call) and return the folder it unpacked to."""
    root = Path(root)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS.names()}")
    root.mkdir(parents=True, exist_ok=True)
    try:
        if name in ("cifar10", "cifar100"):
            from torchvision import datasets  # heavy import, only for users who download

            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            cls(str(root), train=True, download=True)  # one tarball holds both splits
            return root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(IMAGEWOOF_URL, download_root=str(root))
        return root / "imagewoof2-160"
    except OSError as exc:  # URLError, disk full, bad archive: the user's environment, not a bug
        raise DataError(f"could not download {name} into {root}: {exc}") from None


def synthetic_imageset(n_train: int = 512, n_test: int = 256, num_classes: int = 10, size: int = 32,
                       seed: int = 0) -> ImageSet:
    """Generated images a tiny model learns in a few epochs, for tests that must not need files.

    Each class has its own colour and stripe direction/frequency; per-image noise keeps it from
    being trivially memorised, and the split is balanced so chance accuracy is 1/num_classes.
    """
    for arg, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1), ("num_classes", num_classes, 2),
                            ("size", size, 4)):
        if value < low:
            raise ValueError(f"{arg} must be >= {low}, got {value!r}")
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(num_classes, 3, 1, 1, generator=g) * 160 + 40
    grid = torch.arange(size, dtype=torch.float32)
    k = torch.arange(num_classes)
    freq = (k // 2 % 4 + 1).float().view(-1, 1, 1) * 2 * torch.pi / size
    # even classes stripe across rows, odd ones across columns
    waves = torch.where((k % 2 == 0).view(-1, 1, 1), torch.sin(freq * grid.view(1, -1, 1)).expand(-1, size, size),
                        torch.sin(freq * grid.view(1, 1, -1)).expand(-1, size, size))
    patterns = colours + 40 * waves.unsqueeze(1)  # [K,3,S,S]

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        noise = torch.randn(n, 3, size, size, generator=g) * 20
        return (patterns[y] + noise).round().clamp(0, 255).to(torch.uint8), y

    classes = tuple(f"class{i}" for i in range(num_classes))
    return make_imageset("synthetic", split(n_train), split(n_test), classes,
                         options=f"n={n_train},{n_test}|k={num_classes}|size={size}|seed={seed}")
