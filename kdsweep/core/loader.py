"""GPU-resident batches after airbench's ``CifarLoader``: the split stays on the device as uint8.

uint8 is a quarter of float32's size and copies fastest; crop, flip and normalisation run as a few
batched kernels per step, and nothing here waits on the device (no ``.item()``), so the host can
queue the next step while the current one runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import torch
import torch.nn.functional as F

from kdsweep.errors import DataError

IntOrTensor = TypeVar("IntOrTensor", int, torch.Tensor)


@dataclass
class Batch:
    """One step's inputs, plus where they came from so teacher logits can be looked up."""

    x: torch.Tensor  # float [B,3,H,W] normalised, on the device, in the loader's dtype
    y: torch.Tensor  # int64 [B]
    index: torch.Tensor  # int64 [B] image indices into the split
    view: torch.Tensor | None  # int64 [B] augmentation id (see offsets_to_view); None when not augmented
    # stream loader (core/stream.py): int64 [B,5] crop record (top, left, height, width, flip) in source pixels
    crop: torch.Tensor | None = None


def num_views(pad: int) -> int:
    """How many distinct crops x flips exist, the length of a per-view teacher-logit table."""
    return (2 * pad + 1) ** 2 * 2


def offsets_to_view(dx: IntOrTensor, dy: IntOrTensor, flip: bool | torch.Tensor, pad: int) -> IntOrTensor:
    """Pack a crop offset (each in ``0..2*pad``) and a flip into one id in ``[0, num_views(pad))``."""
    f = flip.long() if isinstance(flip, torch.Tensor) else int(flip)
    return (dy * (2 * pad + 1) + dx) * 2 + f  # type: ignore[return-value]


def view_to_offsets(view: IntOrTensor, pad: int) -> tuple[IntOrTensor, IntOrTensor, bool | torch.Tensor]:
    """Inverse of :func:`offsets_to_view`: ``(dx, dy, flip)``; flip is bool (a bool tensor for tensors)."""
    side = 2 * pad + 1
    flip = (view % 2).bool() if isinstance(view, torch.Tensor) else bool(view % 2)
    return (view // 2) % side, view // (2 * side), flip  # type: ignore[return-value]


def augment(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-image crop of the zero-padded batch at ``(dy, dx)``, then horizontal flip where ``flip``.

    The same as torchvision ``RandomCrop(H, padding=pad)`` (fill 0) + ``RandomHorizontalFlip`` with
    the draws given, but one gather for the whole batch instead of a Python loop over images.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = dy.view(b, 1) + torch.arange(h, device=x.device)  # [B,H]
    cols = dx.view(b, 1) + torch.arange(w, device=x.device)  # [B,W]
    cols = torch.where(flip.view(b, 1).bool(), cols.flip(1), cols)  # flipping the crop reverses its columns
    return padded[torch.arange(b, device=x.device).view(b, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1),
                  rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


@dataclass
class EpochDraws:
    """One epoch's random draws on the device; entry ``i`` belongs to the ``i``-th image visited."""

    order: torch.Tensor  # int64 [N] image indices in visiting order
    dx: torch.Tensor  # int64 [N] crop column offset in 0..2*pad
    dy: torch.Tensor  # int64 [N] crop row offset
    flips: torch.Tensor  # bool [N]
    views: torch.Tensor  # int64 [N] offsets_to_view(dx, dy, flips, pad)

    def copy_(self, other: "EpochDraws") -> "EpochDraws":
        """Overwrite in place (a captured graph keeps reading the same buffers)."""
        for name in ("order", "dx", "dy", "flips", "views"):
            getattr(self, name).copy_(getattr(other, name))
        return self


class DeviceLoader:
    """Keeps a split on ``device`` as uint8 and yields normalised float batches; augments per image.

    ``train=True`` shuffles, crops with ``pad`` and flips (p=0.5) and drops the last partial batch
    by default, so every step has the same shape; ``train=False`` walks the split in order, whole.
    ``epoch(e)`` is a pure function of ``(seed, e)``: re-running an epoch gives the same batches.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, device: torch.device | str,
                 mean: Sequence[float], std: Sequence[float], train: bool, seed: int = 0, pad: int = 4,
                 flip: bool = True, drop_last: bool | None = None, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, resize: int | None = None,
                 shard: tuple[int, int] | None = None) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"x must be uint8 [N,C,H,W], got {x.dtype} {list(x.shape)}")
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} images but y has {len(y)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad!r}")
        if len(mean) != x.shape[1] or len(std) != x.shape[1] or min(std) <= 0:
            raise ValueError(f"mean {tuple(mean)!r} and std {tuple(std)!r} need {x.shape[1]} values, std > 0")
        self.device = torch.device(device)
        self.batch_size, self.train, self.seed, self.pad, self.flip = batch_size, train, seed, pad, flip
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last, self.dtype = channels_last, dtype
        self.resize = resize if resize and resize != x.shape[-1] else None  # ImageSet.input_size
        # (rank, processes) of a data-parallel run: this process takes its slice of every global batch
        self.shard = shard
        if shard is not None and (not train or batch_size % shard[1] or not 0 <= shard[0] < shard[1]):
            raise ValueError(f"shard={shard!r} needs a training loader whose batch_size={batch_size} "
                             f"splits into {shard[1]} equal parts")
        if len(x) == 0 or (self.drop_last and len(x) < batch_size):
            raise DataError(f"split has {len(x)} images, fewer than batch_size={batch_size} with drop_last")
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        # (x/255 - mean)/std == x*scale + shift, one fused multiply-add on the device
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1) / std_t

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (on the device) to the float input the model sees; used for teacher views too."""
        x = x.float()
        if self.resize is not None:  # after the crop and flip, as on the original pixels; antialiased when shrinking
            x = torch.nn.functional.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                                                antialias=self.resize < x.shape[-1], align_corners=False)
        out = torch.addcmul(self._shift, x, self._scale).to(self.dtype)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of epoch ``epoch``; the same (seed, epoch) always gives the same batches."""
        n, bs = len(self.x), self.batch_size
        if not self.train:
            for start in range(0, len(self) * bs, bs):
                stop = min(start + bs, n)
                index = torch.arange(start, stop, device=self.device)
                yield Batch(self.normalise(self.x[start:stop]), self.y[start:stop], index, None)
            return
        draws = self.draws(epoch)
        for start in range(0, len(self) * bs, bs):
            stop = min(start + bs, n)
            if self.shard is not None:  # the same global batch on every process, a slice each
                rank, world = self.shard
                per = (stop - start) // world
                start, stop = start + rank * per, start + (rank + 1) * per
            yield self.batch_at(draws, slice(start, stop))

    def draws(self, epoch: int) -> EpochDraws:
        """Epoch ``epoch``'s shuffle and augmentation draws, on the device (training loaders only)."""
        if not self.train:
            raise ValueError("draws() is for training loaders; an evaluation loader walks the split in order")
        n = len(self.x)
        # draws on a CPU generator: device RNG streams differ across GPUs and torch versions
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = torch.randperm(n, generator=g)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
        flips = torch.randint(0, 2, (n,), generator=g).bool() if self.flip else torch.zeros(n, dtype=torch.bool)
        views = offsets_to_view(dx, dy, flips, self.pad)
        # one host-to-device copy per epoch; per step only slices of these
        return EpochDraws(*(t.to(self.device) for t in (order, dx, dy, flips, views)))

    def batch_at(self, draws: EpochDraws, pos: slice | torch.Tensor) -> Batch:
        """The training batch at positions ``pos`` of an epoch's draws.

        ``pos`` is a slice (the eager loop) or a device tensor of positions (a captured CUDA graph
        computes them on the device from a step counter); both give the same batch.
        """
        index = draws.order[pos]
        images = augment(self.x[index], draws.dx[pos], draws.dy[pos], draws.flips[pos], self.pad)
        return Batch(self.normalise(images), self.y[index], index, draws.views[pos])
