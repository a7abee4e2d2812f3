"""Stored soft labels: the teacher runs once per image and crop, not in every student step (FKD).

Shen and Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022
(arXiv:2112.01528). Per training image the store keeps R random-resized-crop regions (the crop
box and a flip flag) and the teacher's top-k probabilities on each; a student's epoch replays, per
image, one of those R crops and learns from the stored distribution with the remaining mass spread
evenly over the other classes (FKD's "marginal smoothing"):

    p_i = stored probability           for the k stored classes
    p_i = (1 - sum of stored) / (C - k) for the other C - k classes

The method sees ``log p`` as the teacher's logits. For the stored classes that is the teacher's own
logits less a constant (log-softmax), and softmax ignores constants, so a method's temperature
softens them exactly as it would the teacher's logits; only the tail is the smoothed one. Methods
that read the full logit vector (``Method.top_k_labels`` False: dkd, dist, lskd) are refused.

Defaults: crops are torchvision's ``RandomResizedCrop`` (scale 0.08-1, ratio 3/4-4/3) and
horizontal flip p = 0.5, the recipe FKD stores on ImageNet; the crop op is
``torchvision.transforms.v2.functional.resized_crop`` (bilinear, antialiased) when the store is
written and when a student replays it, so the student sees the pixels the teacher labelled.

Layout of a store (one folder, numpy memmaps, N images, R crops, top k):
``boxes`` int16 [N,R,4] (top, left, height, width), ``flips`` uint8 [N,R], ``classes`` int16 [N,R,k]
(int32 beyond 32,767 classes), ``probs`` float16 [N,R,k], ``meta.json`` (what it was made from)
and ``progress.json`` (images done). It is written in chunks of images and the progress is
updated after each chunk's bytes are flushed, so a killed writer resumes at the first unfinished
chunk. The folder's name is a hash of teacher weights, data identity and crop recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from kdsweep.core.loader import Batch, DeviceLoader
from kdsweep.errors import KdsweepError

FILES = ("boxes", "flips", "classes", "probs")


@dataclass(frozen=True)
class CropRecipe:
    """How the stored crops are drawn; part of the store's identity."""

    crops: int = 10  # R random-resized crops per image
    top_k: int = 10  # teacher probabilities kept per crop
    scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the image (RandomResizedCrop)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range
    seed: int = 0  # the crops of image i come from seed and i alone

    def __post_init__(self) -> None:
        if self.crops < 1 or self.top_k < 1:
            raise ValueError(f"crops={self.crops} and top_k={self.top_k} must be >= 1")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale={self.scale!r}: need 0 < low <= high <= 1")


def crop_boxes(index: int, height: int, width: int, recipe: CropRecipe) -> tuple[list[list[int]], list[int]]:
    """The R boxes (top, left, h, w) and flips of image ``index``: torchvision's draw, seeded per image."""
    from torchvision.transforms import v2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed * 1_000_003 + index)
        img = torch.empty(1, height, width)  # get_params reads only the size
        boxes = [list(v2.RandomResizedCrop.get_params(img, list(recipe.scale), list(recipe.ratio)))
                 for _ in range(recipe.crops)]
        flips = torch.randint(0, 2, (recipe.crops,)).tolist()
    return boxes, flips


def crop_one(img: torch.Tensor, box, flip: bool, size) -> torch.Tensor:
    """uint8 [C,H,W] -> uint8 [C,*size]: the box (top, left, h, w) resized to ``size``, flipped if asked."""
    from torchvision.transforms.v2 import functional as TF

    top, left, bh, bw = (int(v) for v in box)
    crop = TF.resized_crop(img, top, left, bh, bw, list(size), antialias=True)
    return TF.horizontal_flip(crop) if flip else crop


def apply_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """uint8 [B,C,H,W] -> uint8 [B,C,H,W]: each image's box resized back to H x W, flipped where asked."""
    size = images.shape[-2:]
    out = torch.empty_like(images)
    for i, (img, box, flip) in enumerate(zip(images, boxes.tolist(), flips.tolist())):
        out[i] = crop_one(img, box, flip, size)
    return out


class DecodedImages:
    """The training images of a streamed set (core/lazyset.ImageList), decoded one at a time at their
    own size: a stream store's boxes are in source pixels, its crops resized to ``image_size``."""

    def __init__(self, items) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        from kdsweep.core.stream import decode

        return decode(self.items.read(i))


def store_key(teacher: nn.Module, data_identity: str, recipe: CropRecipe, mean, std) -> str:
    """Hash of the teacher's weights, the data, the crop recipe and the normalisation."""
    h = hashlib.sha256()
    for name, t in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps({"data": data_identity, "recipe": asdict(recipe), "mean": list(mean), "std": list(std)},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


class LabelStore:
    """The memory-mapped arrays of one store (read-only unless ``mode='r+'``)."""

    def __init__(self, folder: Path, mode: str = "r") -> None:
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise KdsweepError(f"soft-label store {self.folder}: meta.json cannot be read ({exc})") from None
        n, r, k = self.meta["images"], self.meta["crops"], self.meta["top_k"]
        shapes = {"boxes": (n, r, 4), "flips": (n, r), "classes": (n, r, k), "probs": (n, r, k)}
        dtypes = {"boxes": np.int16, "flips": np.uint8, "classes": np.dtype(self.meta["class_dtype"]),
                  "probs": np.float16}
        self.arrays = {f: np.memmap(self.folder / f, dtype=dtypes[f], mode=mode, shape=shapes[f]) for f in FILES}
        self.mode = mode

    def __getstate__(self) -> dict:  # another process (DDP ranks, loader workers) maps the files itself
        return {"folder": self.folder, "mode": "r"}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["mode"])

    def crops_of(self, index: np.ndarray, crop: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes int64 [B,4], flips bool [B]) of images ``index``, stored crop ``crop`` each."""
        return (torch.from_numpy(self.arrays["boxes"][index, crop].astype(np.int64)),
                torch.from_numpy(self.arrays["flips"][index, crop].astype(np.bool_)))

    @property
    def done(self) -> int:
        """Images whose crops and labels are written (and flushed)."""
        try:
            return int(json.loads((self.folder / "progress.json").read_text())["done"])
        except (OSError, ValueError, KeyError):
            return 0

    @property
    def complete(self) -> bool:
        return self.done >= self.meta["images"]

    @property
    def bytes_per_image(self) -> float:
        return sum(a.nbytes for a in self.arrays.values()) / self.meta["images"]

    def mark(self, done: int) -> None:
        for a in self.arrays.values():
            a.flush()
        tmp = self.folder / "progress.json.tmp"
        tmp.write_text(json.dumps({"done": done}))
        os.replace(tmp, self.folder / "progress.json")  # atomic: a kill leaves the old count or the new


@torch.no_grad()
def write_store(teacher: nn.Module, images, mean, std, recipe: CropRecipe, folder: Path, *,
                num_classes: int, data_identity: str = "", device: torch.device | str = "cpu",
                chunk: int = 256, size: tuple[int, int] | None = None) -> LabelStore:
    """Write (or finish) the store of ``teacher`` on ``images`` in ``folder``; returns it.

    ``images``: uint8 [N,C,H,W] (resident data; crops resized back to H x W), or :class:`DecodedImages`
    of a streamed set with ``size`` the side the model sees. Resumes after the last chunk recorded in
    ``progress.json``; a complete store is returned as it is.
    """
    folder = Path(folder)
    n = len(images)
    height, width = size if size is not None else tuple(images.shape[-2:])
    k = min(recipe.top_k, num_classes)
    meta = {"images": n, "crops": recipe.crops, "top_k": k, "num_classes": num_classes,
            "class_dtype": "int16" if num_classes <= 32767 else "int32", "size": [height, width],
            "recipe": asdict(recipe), "data": data_identity, "mean": list(mean), "std": list(std)}
    folder.mkdir(parents=True, exist_ok=True)
    fresh = not (folder / "meta.json").exists()
    if fresh:
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    store_meta = json.loads((folder / "meta.json").read_text())
    if {key: store_meta.get(key) for key in meta} != json.loads(json.dumps(meta)):
        raise KdsweepError(f"soft-label store {folder} was made from other data or another recipe")
    if fresh:  # sized, zero-filled files the memmaps open for writing
        sizes = {"boxes": n * recipe.crops * 4 * 2, "flips": n * recipe.crops,
                 "classes": n * recipe.crops * k * np.dtype(meta["class_dtype"]).itemsize,
                 "probs": n * recipe.crops * k * 2}
        for f, size in sizes.items():
            with open(folder / f, "wb") as fh:
                fh.truncate(size)
    store = LabelStore(folder, mode="r+")
    device = torch.device(device)
    teacher = teacher.eval().to(device)
    scale = 1.0 / (255.0 * torch.tensor(std, device=device).view(1, -1, 1, 1))
    shift = -torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0 * scale
    a = store.arrays
    for start in range(store.done, n, chunk):
        stop = min(start + chunk, n)
        originals = [images[i] for i in range(start, stop)]  # decoded once for all R crops
        drawn = [crop_boxes(i, img.shape[-2], img.shape[-1], recipe) for i, img in zip(range(start, stop), originals)]
        boxes = torch.tensor([b for b, _ in drawn], dtype=torch.int16)  # [c,R,4]
        flips = torch.tensor([f for _, f in drawn], dtype=torch.uint8)  # [c,R]
        for r in range(recipe.crops):
            views = torch.stack([crop_one(img, boxes[j, r], bool(flips[j, r]), (height, width))
                                 for j, img in enumerate(originals)]).to(device)
            probs = teacher(torch.addcmul(shift, views.float(), scale)).float().softmax(1)
            top = probs.topk(k, dim=1)
            a["classes"][start:stop, r] = top.indices.cpu().numpy().astype(a["classes"].dtype)
            a["probs"][start:stop, r] = top.values.cpu().numpy().astype(np.float16)
        a["boxes"][start:stop] = boxes.numpy()
        a["flips"][start:stop] = flips.numpy()
        store.mark(stop)
    return store


class StoredCropLoader:
    """Training batches from the stored crops: epoch ``e`` shows image ``i`` through crop
    ``picks[i]``, drawn from (seed, e); shuffling, batch sizes, dropping and DDP shards as
    :class:`DeviceLoader` (whose images and normalisation it uses). ``Batch.view`` is the crop number."""

    def __init__(self, base: DeviceLoader, store: LabelStore) -> None:
        if store.meta["images"] != len(base.x):
            raise KdsweepError(f"soft-label store {store.folder} holds {store.meta['images']} images, "
                               f"the training split {len(base.x)}")
        self.base, self.store = base, store  # read per batch from the memory-mapped files
        self.device, self.batch_size, self.shard = base.device, base.batch_size, base.shard
        self.x_cpu = base.x.cpu()  # the crop op runs per image on the host's copy

    def __len__(self) -> int:
        return len(self.base)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        n, bs, crops = len(self.x_cpu), self.batch_size, self.store.meta["crops"]
        g = torch.Generator().manual_seed(self.base.seed * 100003 + epoch)
        order = torch.randperm(n, generator=g)
        picks = torch.randint(0, crops, (n,), generator=g)  # indexed by image: (seed, epoch, index)
        for start in range(0, len(self) * bs, bs):
            stop = min(start + bs, n)
            if self.shard is not None:
                rank, world = self.shard
                per = (stop - start) // world
                start, stop = start + rank * per, start + (rank + 1) * per
            index = order[start:stop]
            view = picks[index]
            images = apply_crops(self.x_cpu[index], *self.store.crops_of(index.numpy(), view.numpy()))
            yield Batch(self.base.normalise(images.to(self.device)), self.base.y[index.to(self.device)],
                        index.to(self.device), view.to(self.device))


class StoredLabels:
    """A teacher source that reads the store instead of running a network (see the module's notes)."""

    def __init__(self, store: LabelStore, data_identity: str) -> None:
        if not store.complete:
            raise KdsweepError(f"soft-label store {store.folder} is unfinished ({store.done} of "
                               f"{store.meta['images']} images); rerun kdsweep teacher labels")
        self.store, self.data_identity = store, data_identity  # read per batch from the memory-mapped files
        self.num_classes = store.meta["num_classes"]
        self.device = torch.device("cpu")

    def train_loader(self, base):
        """The loader a run trains on instead of ``base`` (resident or stream): the stored crops."""
        if isinstance(base, DeviceLoader):
            return StoredCropLoader(base, self.store)
        from kdsweep.core.stored_stream import stored_stream_loader

        return stored_stream_loader(base, self.store)

    def __call__(self, batch: Batch) -> torch.Tensor:
        index, view = batch.index.cpu().numpy(), batch.view.cpu().numpy()
        a = self.store.arrays
        idx = torch.from_numpy(a["classes"][index, view].astype(np.int64))  # [B,k]
        p = torch.from_numpy(a["probs"][index, view].astype(np.float32))
        c, k = self.num_classes, p.shape[1]
        rest = (1.0 - p.sum(1, keepdim=True)).clamp_min(0.0) / max(1, c - k)  # marginal smoothing
        full = rest.expand(-1, c).clone().scatter_(1, idx, p)
        return full.clamp_min(1e-8).log().to(batch.x.device)  # log p: logits up to a constant

    def to(self, device: torch.device, *, channels_last: bool | None = None, bf16: bool | None = None):
        self.device = device
        return self

    def for_run(self, data_identity: str, loader) -> "StoredLabels":
        if data_identity != self.data_identity:
            raise KdsweepError("the soft-label store was written for other data")
        return self

    def compiled(self) -> "StoredLabels":
        return self
