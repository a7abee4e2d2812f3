"""The validation split: images held out of the training split, stratified by class.

Which images are held out depends only on the training labels and ``split_seed`` (never on the
test split), so every run of a study (teacher, baselines, students, confirmation runs) gets the
same split and none of them trains on it. The split's identity is the digest of the held-out
indices; it goes into the data identity, so caches keyed by it never mix splits.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from kdsweep.core.datasets import ImageSet, _channel_stats
from kdsweep.errors import DataError


def val_count(n_train: int, val: float | int) -> int:
    """``val`` as a number of images: a fraction in (0, 1) of the training split, or a count."""
    if isinstance(val, float) and 0 < val < 1:
        return max(1, round(n_train * val))
    return int(val)


def hold_out(data: ImageSet, val: float | int, *, seed: int = 0) -> ImageSet:
    """``data`` with ``val`` of its training images moved to a validation split (``val`` 0: unchanged).

    Each class gives the same share of its images (rounded, at least one from each class that has
    two or more), drawn with a generator seeded by ``seed``.
    """
    n = len(data.train_y)
    count = val_count(n, val)
    if count <= 0:
        return data
    if count >= n:
        raise DataError(f"data.val_split={val!r} holds out {count} of the {n} training images: none left to train on")
    g = torch.Generator().manual_seed(seed)
    held = []
    for c in range(data.num_classes):
        idx = (data.train_y == c).nonzero().flatten()
        if len(idx) < 2:
            continue
        k = min(len(idx) - 1, max(1, round(len(idx) * count / n)))
        held.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val_idx = torch.cat(held).sort().values if held else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    digest = hashlib.sha256(val_idx.numpy().tobytes()).hexdigest()
    if not isinstance(data, ImageSet):  # a LazySet (stream loader): the same indices, as image lists
        return data.held_out(keep, val_idx, digest)
    train_x, train_y = data.train_x[keep], data.train_y[keep]
    mean, std = _channel_stats(train_x)  # statistics of what is trained on
    identity = hashlib.sha256(f"{data.identity}|val:{digest}".encode()).hexdigest()
    return dataclasses.replace(data, train_x=train_x, train_y=train_y, val_x=data.train_x[val_idx],
                               val_y=data.train_y[val_idx], val_digest=digest, mean=mean, std=std, identity=identity)
