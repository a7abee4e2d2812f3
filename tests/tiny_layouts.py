"""Tiny data sets written in the real on-disk layouts (CIFAR pickles, image folders), for CLI tests.

The images come from ``synthetic_imageset`` (learnable colour/stripe classes), so a model can
learn something in two epochs; the files are what torchvision's downloads and the Imagewoof
tarball unpack to, so the real readers are exercised.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from kdsweep.core.data import synthetic_imageset


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))  # protocol 2, as the official files


def _rows(x) -> np.ndarray:
    return x.numpy().reshape(len(x), -1)  # [N, 3*32*32], channel-major like the official records


def write_cifar10(root: Path, *, per_file: int = 40, n_test: int = 100, seed: int = 0,
                  permute_test_labels: int | None = None) -> Path:
    """``root/cifar-10-batches-py``: five training batches of ``per_file`` images, a test batch, meta.

    ``permute_test_labels`` (a seed) shuffles the test labels: the same training data and images,
    a test split whose answers are wrong.
    """
    data = synthetic_imageset(n_train=5 * per_file, n_test=n_test, num_classes=10, seed=seed)
    test_y = data.test_y
    if permute_test_labels is not None:
        rng = np.random.default_rng(permute_test_labels)
        test_y = test_y[rng.permutation(len(test_y))]
    folder = root / "cifar-10-batches-py"
    for i in range(5):
        part = slice(i * per_file, (i + 1) * per_file)
        _dump(folder / f"data_batch_{i + 1}", {"data": _rows(data.train_x[part]),
                                               "labels": data.train_y[part].tolist()})
    _dump(folder / "test_batch", {"data": _rows(data.test_x), "labels": test_y.tolist()})
    _dump(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return root


def write_cifar100(root: Path, *, n_train: int = 400, n_test: int = 200, seed: int = 0) -> Path:
    """``root/cifar-100-python``: train and test with fine (and coarse) labels, and meta."""
    data = synthetic_imageset(n_train=n_train, n_test=n_test, num_classes=100, seed=seed)
    folder = root / "cifar-100-python"
    for name, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        _dump(folder / name, {"data": _rows(x), "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()})
    _dump(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                            "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return root


def write_image_folder(root: Path, *, classes: int = 4, per_class: int = 12, val_per_class: int = 6,
                       size: int = 40, seed: int = 0) -> Path:
    """``root/imagewoof2-160/{train,val}/<class>/*.png`` (JPEG and PNG both read; PNG keeps pixels exact)."""
    from PIL import Image

    data = synthetic_imageset(n_train=classes * per_class, n_test=classes * val_per_class, num_classes=classes,
                              size=size, seed=seed)
    base = root / "imagewoof2-160"
    for split, x, y in (("train", data.train_x, data.train_y), ("val", data.test_x, data.test_y)):
        for i, (img, label) in enumerate(zip(x, y)):
            folder = base / split / f"n0{label.item():07d}"  # Imagewoof's WordNet-id style names
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"img{i:04d}.png")
    return root
