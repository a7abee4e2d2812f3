"""The stream loader: decode and augment in DataLoader workers, hand the trainer the same Batch.

For data larger than memory (``data.loader: stream``). Workers decode (PIL, libjpeg-turbo) and
augment with ``torchvision.transforms.v2.functional`` ops on uint8 tensors; batches cross the
process boundary as uint8 (a quarter of float32's bytes), pinned when the device is CUDA, and are
normalised on the device, as the resident loader does.

Determinism: the visiting order of epoch ``e`` is ``randperm`` seeded by ``(seed, e)`` (the
resident loader's draw), and each image's augmentation comes from a generator seeded by
``(seed, e, index)``, so a batch does not depend on which worker made it, on the worker count,
or on what ran before: a resumed run sees the batches it would have seen.

Augmentation (``StreamOptions.augment``):
- ``imagenet``: the torchvision reference recipe. Training: RandomResizedCrop (scale 0.08-1,
  ratio 3/4-4/3) to ``image_size`` + horizontal flip (p 0.5); evaluation: resize the shorter side
  to ``image_size / 0.875`` and centre crop (256 -> 224). The crop box and flip of each image are
  in ``Batch.crop`` (top, left, height, width, flip in source pixels), so stored-label methods can
  replay them; there is no view id (``Batch.view`` is None), so a teacher runs online.
- ``cifar``: resize the shorter side + centre crop to ``image_size`` (what the resident loader
  holds), then the resident loader's 4-pixel pad crop + flip, with its view id.

A corrupt image met mid-epoch is skipped (the batch is one image shorter) and counted with a
warning; more than ``max_bad_images`` stops the run with a DataError naming the last one.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdsweep.core.lazyset import ImageList, StreamOptions
from kdsweep.core.loader import Batch, offsets_to_view
from kdsweep.errors import DataError

PAD = 4  # cifar recipe: the resident loader's pad
EVAL_CROP = 0.875  # imagenet recipe: 224 of 256


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """One generator seed per (run seed, epoch, image): mixed so neighbours do not share streams."""
    return ((seed * 1_000_003 + epoch) * 2_654_435_761 + index) % (2**63 - 1)


def random_resized_crop_params(height: int, width: int, g: torch.Generator, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params`` with a generator of our own (it reads the global RNG)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
            return i, j, h, w
    # fallback to a central crop, as torchvision does
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def decode(data: bytes) -> torch.Tensor:
    """uint8 [3,H,W] RGB from encoded bytes (JPEG, PNG, WebP, GIF, BMP), decoded by PIL.

    PIL rather than ``torchvision.io.decode_image``: torchvision 0.29 deprecates its decoders (in
    favour of TorchCodec, not a dependency here); both use libjpeg-turbo for JPEG.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        pixels = np.array(img.convert("RGB"))  # a writable copy: torch warns on read-only arrays
    return torch.from_numpy(pixels).permute(2, 0, 1)


def fit(img: torch.Tensor, size: int, resize_to: int | None = None) -> torch.Tensor:
    """Resize the shorter side to ``resize_to`` (default ``size``), then centre crop ``size``."""
    from torchvision.transforms.v2 import functional as TF

    img = TF.resize(img, [resize_to or size], antialias=True)
    return TF.center_crop(img, [size, size])


class StreamImages(Dataset):
    """Items are ``(index, epoch)``; returns (uint8 image, label, index, view, crop) or None if corrupt."""

    def __init__(self, items: ImageList, options: StreamOptions, *, train: bool, augment: bool, seed: int) -> None:
        self.items, self.options, self.train, self.augment, self.seed = items, options, train, augment, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]):
        from torchvision.transforms.v2 import functional as TF

        i, epoch = key
        try:
            img = decode(self.items.read(i))
        except (OSError, ValueError, RuntimeError, SyntaxError) as exc:  # PIL's errors for broken files
            return None, self.items.describe(i), str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        size, label = self.options.image_size, int(self.items.labels[i])
        imagenet = self.options.augment == "imagenet"
        if not (self.train and self.augment):
            out = fit(img, size, round(size / EVAL_CROP) if imagenet else None)
            return out, label, i, -1, (0, 0, img.shape[1], img.shape[2], 0)
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, i))
        if imagenet:
            top, left, h, w = random_resized_crop_params(img.shape[1], img.shape[2], g)
            flip = bool(torch.randint(0, 2, (1,), generator=g).item())
            out = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
            return (TF.horizontal_flip(out) if flip else out), label, i, -1, (top, left, h, w, int(flip))
        dx, dy = (int(v) for v in torch.randint(0, 2 * PAD + 1, (2,), generator=g))
        flip = int(torch.randint(0, 2, (1,), generator=g).item())
        out = TF.crop(TF.pad(fit(img, size), [PAD]), dy, dx, size, size)
        out = TF.horizontal_flip(out) if flip else out
        return out, label, i, offsets_to_view(dx, dy, bool(flip), PAD), (0, 0, img.shape[1], img.shape[2], flip)


def collate(samples: list) -> tuple:
    """Stack the good samples; the corrupt ones come back as (file, reason) pairs."""
    good = [s for s in samples if s[0] is not None]
    bad = [(s[1], s[2]) for s in samples if s[0] is None]
    if not good:
        return None, None, None, None, None, bad
    x = torch.stack([s[0] for s in good])
    y, index, view = (torch.tensor([s[k] for s in good], dtype=torch.int64) for k in (1, 2, 3))
    crop = torch.tensor([s[4] for s in good], dtype=torch.int64)
    return x, y, index, view, crop, bad


class StreamLoader:
    """Batches of a :class:`ImageList`, decoded and augmented in ``options.workers`` processes.

    The interface the trainer uses of :class:`~kdsweep.core.loader.DeviceLoader`: ``epoch(e)``,
    ``len``, ``batch_size``, ``device``, ``train``, ``normalise``. ``train=True`` shuffles by
    (seed, epoch), augments when ``augment`` and drops the last partial batch.
    """

    def __init__(self, items: ImageList, options: StreamOptions, *, batch_size: int, device: torch.device | str,
                 mean: Sequence[float], std: Sequence[float], train: bool, seed: int = 0, augment: bool = True,
                 drop_last: bool | None = None, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.items, self.options = items, options
        self.device = torch.device(device)
        self.batch_size, self.train, self.seed, self.augment = batch_size, train, seed, augment
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last, self.dtype = channels_last, dtype
        self.pad = PAD if augment and options.augment == "cifar" else 0
        self.bad_images = 0  # corrupt images skipped so far, over all epochs
        self.shard: tuple[int, int] | None = None  # (rank, processes) of a data-parallel run
        self.replays_views = False  # stored soft labels (core/soft_labels.py): Batch.view is the crop number
        self.dataset = StreamImages(items, options, train=train, augment=augment, seed=seed)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) / std_t

    def __len__(self) -> int:
        n = len(self.items)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(self._shift, x.float(), self._scale).to(self.dtype)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def order(self, epoch: int) -> torch.Tensor:
        """The visiting order of epoch ``epoch``: the resident loader's draw for the same (seed, epoch)."""
        n = len(self.items)
        if not self.train:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        order = self.order(epoch).tolist()
        bs = self.batch_size
        return [self.my_share([(i, epoch) for i in order[s:s + bs]]) for s in range(0, len(self) * bs, bs)]

    def my_share(self, batch: list) -> list:
        """This process's slice of a global batch in a data-parallel run (core/distributed.py), else all of it."""
        if self.shard is None:
            return batch
        rank, world = self.shard
        per = len(batch) // world
        return batch[rank * per:(rank + 1) * per]

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of epoch ``epoch``; the same (seed, epoch) always gives the same batches."""
        workers = self.options.workers
        cuda = self.device.type == "cuda"
        loader = DataLoader(self.dataset, batch_sampler=self.batches(epoch), num_workers=workers,
                            collate_fn=collate, pin_memory=cuda, prefetch_factor=4 if workers else None,
                            persistent_workers=False)
        for x, y, index, view, crop, bad in loader:
            if bad:
                self._count_bad(bad)
            if x is None:
                continue
            x = self.normalise(x.to(self.device, non_blocking=cuda))
            views = view.to(self.device) if (self.train and self.augment and self.pad) or self.replays_views else None
            yield Batch(x, y.to(self.device, non_blocking=cuda), index.to(self.device), views,
                        crop=crop if self.train and self.augment else None)

    def _count_bad(self, bad: list[tuple[str, str]]) -> None:
        self.bad_images += len(bad)
        where, why = bad[-1]
        if self.bad_images > self.options.max_bad_images:
            raise DataError(f"{where}: unreadable image ({why}); {self.bad_images} corrupt images met, more than "
                            f"data.max_bad_images={self.options.max_bad_images}")
        warnings.warn(f"{where}: unreadable image ({why}), skipped ({self.bad_images} so far, "
                      f"data.max_bad_images={self.options.max_bad_images})", RuntimeWarning, stacklevel=2)


def stream_loaders(cfg, data, device: torch.device, *, channels_last: bool) -> tuple:
    """(train, test, validation or None) stream loaders of a LazySet for the run ``cfg`` (a TrainConfig)."""
    common = dict(device=device, mean=data.mean, std=data.std, channels_last=channels_last)
    train = StreamLoader(data.train, data.options, batch_size=cfg.batch_size, train=True, seed=cfg.seed,
                         augment=cfg.augment, **common)
    eval_batch = cfg.batch_size  # what training fits in memory; a larger one would raise the peak RSS
    test = StreamLoader(data.test, data.options, batch_size=eval_batch, train=False, **common)
    val = StreamLoader(data.val, data.options, batch_size=eval_batch, train=False, **common) if data.has_val else None
    return train, test, val
