"""Images/s of kdsweep's stream loader against torchvision's ImageFolder + DataLoader, same work.

Both read the same generated JPEG folder (default 2,000 images of 256 px) with the same workers
and batch size, decode with PIL and apply the ImageNet training recipe (RandomResizedCrop 224,
scale 0.08-1, + flip) to normalised float batches:

- ``kdsweep``: ``kdsweep.core.stream.StreamLoader`` (uint8 tensors through the workers, crop and
  resize by ``torchvision.transforms.v2.functional``, normalised in the training process);
- ``torchvision-reference``: ``ImageFolder`` + ``v2.Compose([RandomResizedCrop, RandomHorizontalFlip,
  ToImage, ToDtype(float32, scale=True), Normalize])``, the reference scripts' recipe (crop and
  resize on the PIL image, float tensors through the workers);
- ``torchvision-tensor``: ``ImageFolder`` + ``v2.Compose([ToImage, RandomResizedCrop, RandomHorizontalFlip,
  ToDtype, Normalize])``: the crop and resize on uint8 tensors like kdsweep, floats through the workers.

The rounds alternate the loaders back to back; the median of the rounds is printed per loader.

    python benchmarks/stream_loader.py                       # generates /tmp/kdsweep-bench-jpegs
    python benchmarks/stream_loader.py --workers 2 --rounds 3 --images 2000
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def generate(folder: Path, images: int, size: int, classes: int = 10) -> Path:
    """``folder/{train,val}/cNN/*.jpg``: smooth colour fields with noise (photo-like JPEG sizes)."""
    from PIL import Image

    done = folder / f".done-{images}-{size}"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(images):
        c = i % classes
        base = np.stack([np.sin(xx * (c + 1) * 3 + rng.uniform(0, 6)), np.cos(yy * (c + 2) * 2),
                         np.sin((xx + yy) * 4 + c)], -1)
        img = ((base * 0.5 + 0.5) * 200 + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
        for split in ("train", "val") if i < classes else ("train",):
            path = folder / split / f"c{c:02d}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, quality=90)
    done.touch()
    return folder


def kdsweep_loader(folder: Path, workers: int, batch: int):
    from kdsweep.core.formats import list_dataset
    from kdsweep.core.lazyset import StreamOptions
    from kdsweep.core.stream import StreamLoader

    data = list_dataset("imagefolder", folder, options=StreamOptions(augment="imagenet", image_size=224,
                                                                     workers=workers))

    def epoch(e: int):
        # a new loader per round, so its workers start within the timed epoch as the DataLoaders' do
        loader = StreamLoader(data.train, data.options, batch_size=batch, device="cpu", mean=data.mean,
                              std=data.std, train=True, seed=0)
        return (b.x for b in loader.epoch(e))
    return epoch


def torchvision_loader(folder: Path, workers: int, batch: int, tensor_ops: bool):
    from torchvision import datasets
    from torchvision.transforms import v2

    from kdsweep.core.lazyset import IMAGENET_MEAN, IMAGENET_STD

    crop = [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()]
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    ops = [v2.ToImage(), *crop, *to_float] if tensor_ops else [*crop, v2.ToImage(), *to_float]
    ds = datasets.ImageFolder(str(folder / "train"), transform=v2.Compose(ops))

    def epoch(e: int):
        torch.manual_seed(e)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                             prefetch_factor=4 if workers else None)
        return (x for x, _ in loader)
    return epoch


def images_per_second(epoch_fn, epoch: int) -> float:
    start, seen = time.perf_counter(), 0
    for x in epoch_fn(epoch):
        seen += len(x)
    return seen / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=Path("/tmp/kdsweep-bench-jpegs"))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the training process's share; decoding happens in the workers
    folder = generate(args.folder / f"{args.images}x{args.size}", args.images, args.size)
    loaders = {"kdsweep": kdsweep_loader(folder, args.workers, args.batch),
               "torchvision-reference": torchvision_loader(folder, args.workers, args.batch, tensor_ops=False),
               "torchvision-tensor": torchvision_loader(folder, args.workers, args.batch, tensor_ops=True)}
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for r in range(args.rounds):
        for name, fn in loaders.items():
            rates[name].append(images_per_second(fn, r))
            print(f"round {r + 1} {name}: {rates[name][-1]:.0f} images/s", flush=True)
    print(f"{args.images} JPEGs of {args.size} px, RandomResizedCrop 224 + flip, batch {args.batch}, "
          f"{args.workers} workers, median of {args.rounds} rounds:")
    for name, values in rates.items():
        print(f"  {name:24s} {statistics.median(values):7.0f} images/s")


if __name__ == "__main__":
    main()
