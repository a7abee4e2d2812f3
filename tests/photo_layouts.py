"""Generated photo-like data sets in the three streamable formats (image folder, manifest, hf_disk).

The images come from ``synthetic_imageset`` (learnable colour/stripe classes), saved as JPEG at
mixed, non-square sizes, so decode, resize and random-resized crop all have work to do.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from kdsweep.core.data import synthetic_imageset


def _images(classes: int, per_class: int, val_per_class: int, size: int, seed: int):
    data = synthetic_imageset(n_train=classes * per_class, n_test=classes * val_per_class, num_classes=classes,
                              size=size, seed=seed)
    return (("train", data.train_x, data.train_y), ("val", data.test_x, data.test_y))


def _save(img, path: Path, i: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    w, h = pil.size
    if i % 3 == 1:  # some landscape, some portrait: the crops must cope with both
        pil = pil.resize((w + w // 2, h))
    elif i % 3 == 2:
        pil = pil.resize((w, h + h // 3))
    pil.save(path, quality=90)


def write_jpeg_folder(root: Path, *, classes: int = 3, per_class: int = 8, val_per_class: int = 4,
                      size: int = 48, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/*.jpg`` (the torchvision / ImageNet layout); returns ``root``."""
    for split, x, y in _images(classes, per_class, val_per_class, size, seed):
        for i, (img, label) in enumerate(zip(x, y)):
            _save(img, root / split / f"n{label.item():08d}" / f"img{i:04d}.jpg", i)
    return root


def write_manifest(root: Path, *, parquet: bool = False, names: bool = True, classes: int = 3, per_class: int = 8,
                   val_per_class: int = 4, size: int = 48, seed: int = 0) -> Path:
    """``root/images/*.jpg`` and ``root/manifest.{csv,parquet}`` (path,label,split); returns the manifest."""
    rows = []
    for split, x, y in _images(classes, per_class, val_per_class, size, seed):
        for i, (img, label) in enumerate(zip(x, y)):
            rel = f"images/{split}-{i:04d}.jpg"
            _save(img, root / rel, i)
            rows.append({"path": rel, "label": f"class{label.item()}" if names else int(label),
                         "split": "train" if split == "train" else "test"})
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = root / "manifest.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_hf_disk(root: Path, *, classes: int = 3, per_class: int = 8, val_per_class: int = 4, size: int = 48,
                  seed: int = 0, image_column: str = "image", label_column: str = "label") -> Path:
    """A ``datasets.DatasetDict`` (train, test) with an Image and a ClassLabel column, saved with save_to_disk."""
    import datasets
    from PIL import Image

    parts = {}
    features = datasets.Features({image_column: datasets.Image(),
                                  label_column: datasets.ClassLabel(names=[f"class{i}" for i in range(classes)])})
    for split, x, y in _images(classes, per_class, val_per_class, size, seed):
        images = [Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy())) for img in x]
        parts["train" if split == "train" else "test"] = datasets.Dataset.from_dict(
            {image_column: images, label_column: y.tolist()}, features=features)
    datasets.DatasetDict(parts).save_to_disk(str(root))
    return root
