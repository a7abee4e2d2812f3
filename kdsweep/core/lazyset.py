"""Data sets too large for memory: where each image is and its label, never the pixels.

A :class:`LazySet` answers what an :class:`~kdsweep.core.datasets.ImageSet` answers (labels,
classes, splits, identity, validation hold-out, mean/std) from a list of images; the stream
loader (``core/stream.py``) decodes and augments them in worker processes. The formats that make
one (image folders, CSV/Parquet manifests, Hugging Face ``save_to_disk`` folders) live in
``core/formats.py``. Its identity is a digest of the list itself (paths, sizes, mtimes, or the
manifest's bytes), cheap to compute on a million files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from kdsweep.errors import DataError

# torchvision's reference recipe normalises with these (they are what pretrained ImageNet weights expect)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageStore(Protocol):
    """Bytes of one image by key (a relative path, a row number); picklable for DataLoader workers."""

    def read(self, key) -> bytes: ...

    def describe(self, key) -> str:
        """How a user finds the image: a path, or a file and row."""


@dataclass(frozen=True)
class FileStore:
    """Images are files under ``root``; keys are paths relative to it."""

    root: Path

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def describe(self, key: str) -> str:
        return str(self.root / key)


@dataclass
class ImageList:
    """One split: a store, the keys of its images and their labels; ``subset`` keeps the store."""

    store: ImageStore
    keys: Sequence
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, i: int) -> bytes:
        return self.store.read(self.keys[i])

    def describe(self, i: int) -> str:
        return self.store.describe(self.keys[i])

    def subset(self, index: torch.Tensor) -> "ImageList":
        idx = index.tolist()
        return ImageList(self.store, [self.keys[i] for i in idx], self.labels[index])


@dataclass(frozen=True)
class StreamOptions:
    """How the stream loader reads this data: augmentation recipe, size, workers, bad-image limit."""

    augment: str = "cifar"  # cifar: resize + centre crop, then 4-px pad crop + flip; imagenet: random-resized crop
    image_size: int = 64  # the side of every image the model sees
    workers: int = 2  # DataLoader worker processes (0: decode in the training process)
    max_bad_images: int = 0  # corrupt images skipped before the run stops


@dataclass(frozen=True)
class LazySet:
    """A split-pair as image lists: what ImageSet holds as tensors, this holds as keys."""

    name: str
    train: ImageList
    test: ImageList
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    identity: str
    options: StreamOptions = StreamOptions()
    val: ImageList | None = None
    val_digest: str = ""
    loader_note: str = ""  # why the stream loader was chosen (printed by the CLI)
    loader = "stream"

    @property
    def train_y(self) -> torch.Tensor:
        return self.train.labels

    @property
    def test_y(self) -> torch.Tensor:
        return self.test.labels

    @property
    def val_y(self) -> torch.Tensor | None:
        return self.val.labels if self.val is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_val(self) -> bool:
        return self.val is not None and len(self.val) > 0

    @property
    def image_size(self) -> int:
        return self.options.image_size

    def held_out(self, keep: torch.Tensor, val_idx: torch.Tensor, digest: str) -> "LazySet":
        """This set with the training images at ``val_idx`` moved to the validation split."""
        identity = hashlib.sha256(f"{self.identity}|val:{digest}".encode()).hexdigest()
        return dataclasses.replace(self, train=self.train.subset(keep.nonzero().flatten()),
                                   val=self.train.subset(val_idx), val_digest=digest, identity=identity)


def make_lazyset(name: str, train: ImageList, test: ImageList, classes: tuple[str, ...], *, listing: str,
                 options: StreamOptions) -> LazySet:
    """Check every class has training images and labels fit the classes; identity from the ``listing``."""
    for split, items in (("train", train), ("test", test)):
        if len(items) == 0:
            raise DataError(f"{name} {split}: no images")
        bad = ((items.labels < 0) | (items.labels >= len(classes))).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{items.describe(i)}: label {int(items.labels[i])} is outside the "
                            f"{len(classes)} classes ({split} row {i})")
    counts = torch.bincount(train.labels, minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(f"{name}: class {empty[0]!r} has no training image ({len(empty)} empty classes)")
    digest = hashlib.sha256(f"{name}|{options.augment}|{options.image_size}|{listing}".encode()).hexdigest()
    if options.augment == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = sample_stats(train, options.image_size)
    return LazySet(name, train, test, tuple(classes), mean, std, digest, options)


def sample_stats(items: ImageList, size: int, count: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0..1 scale) of up to ``count`` evenly spaced training images."""
    picks = np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)
    total, squares, pixels = np.zeros(3), np.zeros(3), 0
    for i in dict.fromkeys(picks.tolist()):  # one image at a time: the point is not to hold the set
        try:
            img = decode_fit(items.read(i), size).reshape(-1, 3).astype(np.float64) / 255
        except (OSError, DataError):
            continue  # a corrupt image: the loader counts it; the statistics do without it
        total += img.sum(0)
        squares += np.square(img).sum(0)
        pixels += len(img)
    if not pixels:
        raise DataError(f"{items.describe(0)}: none of the sampled training images could be decoded")
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - np.square(mean), 1e-12))
    return tuple(mean.tolist()), tuple(std.tolist())


def decode_fit(data: bytes, size: int) -> np.ndarray:
    """Decode ``data`` with PIL and resize on the shorter side + centre crop to ``size`` (HWC uint8)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (size, size))  # JPEG decodes at a reduced scale, still >= size
        out = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def decode_resident(lazy: LazySet, size: int):
    """The whole set decoded into memory at ``size`` (the resident loader's ImageSet)."""
    from concurrent.futures import ThreadPoolExecutor

    from kdsweep.core.datasets import make_imageset

    def one(items: ImageList, i: int) -> np.ndarray:
        try:
            return decode_fit(items.read(i), size)
        except OSError as exc:
            raise DataError(f"{items.describe(i)}: unreadable image ({exc})") from None

    splits = []
    for items in (lazy.train, lazy.test):
        with ThreadPoolExecutor(max_workers=8) as pool:  # PIL releases the GIL while decoding
            images = list(pool.map(lambda i: one(items, i), range(len(items))))
        splits.append((torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), items.labels))
    return make_imageset(lazy.name, splits[0], splits[1], lazy.classes, options=f"lazy:{lazy.identity}|size={size}")
