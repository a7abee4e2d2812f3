"""Stored soft labels on the stream loader: workers decode each image and cut its stored crop.

The stream counterpart of :class:`kdsweep.core.soft_labels.StoredCropLoader`: the same visiting order
and the same crop pick per (seed, epoch, index) (one draw per epoch, indexed by image), the stored
box (in source pixels) resized to ``image_size`` by ``resized_crop`` and flipped as stored, in the
DataLoader workers; ``Batch.view`` is the crop number the labels are looked up by.
"""

from __future__ import annotations

import copy

import torch

from kdsweep.core.soft_labels import LabelStore, crop_one
from kdsweep.core.stream import StreamImages, StreamLoader, decode
from kdsweep.errors import KdsweepError


class StoredCropImages(StreamImages):
    """Items are ``(index, epoch, crop)``: the image decoded, its stored crop ``crop`` cut and resized."""

    def __init__(self, base: StreamImages, store: LabelStore) -> None:
        super().__init__(base.items, base.options, train=True, augment=True, seed=base.seed)
        self.store = store  # pickled by its folder: each worker maps the files itself

    def __getitem__(self, key: tuple[int, int, int]):
        i, _, r = key
        try:
            img = decode(self.items.read(i))
        except (OSError, ValueError, RuntimeError, SyntaxError) as exc:
            return None, self.items.describe(i), str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        size = self.options.image_size
        box, flip = self.store.arrays["boxes"][i, r].tolist(), bool(self.store.arrays["flips"][i, r])
        out = crop_one(img, box, flip, (size, size))
        return out, int(self.items.labels[i]), i, r, (*box, int(flip))


class StoredCropStream(StreamLoader):
    """A training :class:`StreamLoader` whose batches are the stored crops (see the module's notes)."""

    def batches(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        n, bs = len(self.items), self.batch_size
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        picks = torch.randint(0, self.crops, (n,), generator=g).tolist()  # by image: (seed, epoch, index)
        return [self.my_share([(i, epoch, picks[i]) for i in order[s:s + bs]]) for s in range(0, len(self) * bs, bs)]


def stored_stream_loader(base: StreamLoader, store: LabelStore) -> StoredCropStream:
    if store.meta["images"] != len(base.items):
        raise KdsweepError(f"soft-label store {store.folder} holds {store.meta['images']} images, "
                           f"the training split {len(base.items)}")
    loader = copy.copy(base)
    loader.__class__ = StoredCropStream
    loader.dataset = StoredCropImages(base.dataset, store)
    loader.crops, loader.replays_views = store.meta["crops"], True
    if hasattr(base, "_sampler"):  # a stream loader that keeps its batch sampler and DataLoader between
        # epochs: this one needs its own (its workers decode with the stored-crop dataset)
        loader._sampler, loader._loader = type(base._sampler)(loader), None
    return loader
