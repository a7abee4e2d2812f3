"""Read whole data sets into memory as uint8 tensors; the loader moves them to the device.

Readers never touch the network: a missing folder names the ``kdsweep data download`` command.
"""

from __future__ import annotations

import hashlib
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kdsweep.core.registry import Registry
from kdsweep.errors import DataError


@dataclass(frozen=True)
class ImageSet:
    """A whole split-pair in memory as uint8 NCHW tensors (CPU)."""

    name: str  # registry name, e.g. "cifar10"
    train_x: torch.Tensor  # uint8 [N,3,H,W]
    train_y: torch.Tensor  # int64 [N]
    test_x: torch.Tensor  # uint8 [M,3,H,W]
    test_y: torch.Tensor  # int64 [M]
    classes: tuple[str, ...]  # label i is classes[i]
    mean: tuple[float, float, float]  # per channel on the 0..1 scale, from train_x only
    std: tuple[float, float, float]
    identity: str  # sha256 of the options and bytes; keys teacher caches
    # held out of the training images (core/split.py); no run trains on them
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    val_digest: str = ""  # sha256 of the held-out indices: the validation split's identity
    loader_note: str = ""  # data.loader auto: why this loader (kdsweep.core.memory), printed by the CLI
    loader = "resident"  # the stream loader's data is a kdsweep.core.lazyset.LazySet

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.test_x.shape[-1])

    @property
    def has_val(self) -> bool:
        return self.val_y is not None and len(self.val_y) > 0


DATASETS: Registry[Callable[..., ImageSet]] = Registry("dataset")


def make_imageset(name: str, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                  classes: tuple[str, ...], *, options: str = "") -> ImageSet:
    """Check shapes, then add the train statistics and the identity every reader needs."""
    for split, (x, y) in (("train", train), ("test", test)):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise DataError(f"{name} {split}: expected uint8 [N,3,H,W], got {x.dtype} {list(x.shape)}")
        if len(x) == 0 or len(y) != len(x):
            raise DataError(f"{name} {split}: {len(x)} images but {len(y)} labels")
        if int(y.min()) < 0 or int(y.max()) >= len(classes):
            raise DataError(f"{name} {split}: labels span {int(y.min())}..{int(y.max())} "
                            f"but there are {len(classes)} classes")
    mean, std = _channel_stats(train[0])
    digest = hashlib.sha256(f"{name}|{options}".encode())
    for t in (*train, *test):
        # shape goes in too, so the same bytes cut differently hash differently
        digest.update(str(list(t.shape)).encode())
        digest.update(t.contiguous().numpy().data)
    return ImageSet(name, train[0], train[1].long(), test[0], test[1].long(), tuple(classes),
                    mean, std, digest.hexdigest())


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    # chunks keep the float64 copy small: 50k CIFAR images would be 1.2 GB at once
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in x.split(2048):
        c = chunk.double()
        total += c.sum((0, 2, 3))
        squares += c.square().sum((0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n / 255
    std = (squares / n / 255**2 - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())  # type: ignore[return-value]


def load_dataset(name: str, root: Path | str, *, limit_per_file: int | None = None,
                 image_size: int | None = None) -> ImageSet:
    """Read data set ``name`` from ``root``; ``limit_per_file`` keeps the first N records of each file."""
    if limit_per_file is not None and limit_per_file < 1:
        raise ValueError(f"limit_per_file must be >= 1 or None, got {limit_per_file!r}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1 or None, got {image_size!r}")
    return DATASETS.get(name)(Path(root), limit_per_file=limit_per_file, image_size=image_size)


def missing(name: str, root: Path, searched: list[Path]) -> DataError:
    """The one-line error for absent data, naming where we looked and how to fetch it."""
    where = ", ".join(str(p) for p in searched)
    return DataError(f"no {name} data found (searched {where}); "
                     f"run `kdsweep data download {name} --root {root}`")


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100


@dataclass(frozen=True)
class _Cifar:
    """Where one CIFAR variant keeps its files in the two official layouts."""

    num_classes: int
    py_dir: str
    py_train: tuple[str, ...]
    py_test: str
    py_label: str
    py_meta: tuple[str, str]  # file, key
    bin_dir: str
    bin_train: tuple[str, ...]
    bin_test: str
    bin_label_bytes: int  # cifar-100 stores coarse then fine; we use the last
    bin_meta: str


_CIFAR = {
    "cifar10": _Cifar(10, "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                      "labels", ("batches.meta", "label_names"), "cifar-10-batches-bin",
                      tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", 1, "batches.meta.txt"),
    "cifar100": _Cifar(100, "cifar-100-python", ("train",), "test", "fine_labels", ("meta", "fine_label_names"),
                       "cifar-100-binary", ("train.bin",), "test.bin", 2, "fine_label_names.txt"),
}
_PIXELS = 3 * 32 * 32


def _read_cifar(name: str, root: Path, limit: int | None, size: int | None) -> ImageSet:
    spec = _CIFAR[name]
    searched: list[Path] = []
    # the python layout is what torchvision downloads, so look for it first
    for layout, folder, first in (("py", spec.py_dir, spec.py_train[0]), ("bin", spec.bin_dir, spec.bin_train[0])):
        for base in (root / folder, root):
            searched.append(base)
            if (base / first).is_file():
                read = _read_pickle if layout == "py" else _read_binary
                train_names = spec.py_train if layout == "py" else spec.bin_train
                parts = [read(base / f, spec, limit) for f in train_names]
                test = read(base / (spec.py_test if layout == "py" else spec.bin_test), spec, limit)
                train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
                classes = _cifar_classes(base, spec, layout)
                if size is not None and size != 32:
                    train, test = (_resize(train[0], size), train[1]), (_resize(test[0], size), test[1])
                return make_imageset(name, train, test, classes, options=f"limit={limit}|size={size}")
    raise missing(name, root, list(dict.fromkeys(searched)))


def _read_binary(path: Path, spec: _Cifar, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    record = spec.bin_label_bytes + _PIXELS
    size = path.stat().st_size
    if size == 0 or size % record:
        raise DataError(f"{path}: {size} bytes is not a whole number of {record}-byte records (truncated?)")
    n = size // record if limit is None else min(limit, size // record)
    with path.open("rb") as f:
        rows = np.frombuffer(f.read(n * record), dtype=np.uint8).reshape(n, record)
    labels = torch.from_numpy(rows[:, spec.bin_label_bytes - 1].astype(np.int64))
    pixels = torch.from_numpy(rows[:, spec.bin_label_bytes:].copy()).view(n, 3, 32, 32)
    return pixels, labels


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else: a data file should never run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core."):  # numpy 2 moved numpy.core to numpy._core
            module = module.replace("numpy.core.", "numpy._core.", 1)
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = _ArraysOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as exc:
        raise DataError(f"{path}: not a readable CIFAR pickle ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def _read_pickle(path: Path, spec: _Cifar, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    obj = _load_pickle(path)
    if "data" not in obj or spec.py_label not in obj:
        raise DataError(f"{path}: missing 'data' or {spec.py_label!r} (keys: {sorted(obj)})")
    data = np.asarray(obj["data"], dtype=np.uint8)[:limit]
    labels = np.asarray(obj[spec.py_label], dtype=np.int64)[:limit]
    if data.ndim != 2 or data.shape[1] != _PIXELS or len(labels) != len(data):
        raise DataError(f"{path}: data {data.shape} and {len(labels)} labels do not form [N,{_PIXELS}] records")
    return torch.from_numpy(data.copy()).view(-1, 3, 32, 32), torch.from_numpy(labels.copy())


def _cifar_classes(base: Path, spec: _Cifar, layout: str) -> tuple[str, ...]:
    # names are cosmetic, so a missing meta file falls back to numbers rather than failing
    if layout == "bin" and (base / spec.bin_meta).is_file():
        names = [s.strip() for s in (base / spec.bin_meta).read_text().splitlines() if s.strip()]
    elif layout == "py" and (base / spec.py_meta[0]).is_file():
        names = [str(s) for s in _load_pickle(base / spec.py_meta[0]).get(spec.py_meta[1], [])]
    else:
        names = []
    return tuple(names) if len(names) == spec.num_classes else tuple(str(i) for i in range(spec.num_classes))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    out = [torch.nn.functional.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True)
           for c in x.split(2048)]
    return torch.cat(out).round_().clamp_(0, 255).to(torch.uint8)


@DATASETS.register("cifar10")
def cifar10(root: Path, *, limit_per_file: int | None = None, image_size: int | None = None) -> ImageSet:
    """CIFAR-10 from ``cifar-10-batches-py`` or ``cifar-10-batches-bin`` (or either folder itself)."""
    return _read_cifar("cifar10", root, limit_per_file, image_size)


@DATASETS.register("cifar100")
def cifar100(root: Path, *, limit_per_file: int | None = None, image_size: int | None = None) -> ImageSet:
    """CIFAR-100 fine labels from ``cifar-100-python`` or ``cifar-100-binary`` (or either folder itself)."""
    return _read_cifar("cifar100", root, limit_per_file, image_size)


# ---------------------------------------------------------------- image folders (Imagewoof)

_SUFFIXES = {".jpg", ".jpeg", ".png"}
DEFAULT_IMAGE_SIZE = 64  # image folders without data.image_size


@DATASETS.register("imagefolder")
def imagefolder(root: Path, *, limit_per_file: int | None = None, image_size: int | None = None) -> ImageSet:
    """``train/<class>/*`` and ``val/<class>/*`` under ``root`` or its single subfolder (e.g. imagewoof2-160).

    Each image is resized on its shorter side and centre-cropped to ``image_size`` (default 64), so
    mixed sizes stack; ``limit_per_file`` keeps the first N files of each class folder.
    """
    size = image_size or DEFAULT_IMAGE_SIZE
    base = _find_folder(root)
    classes = tuple(sorted(d.name for d in (base / "train").iterdir() if d.is_dir()))
    splits = [_read_split(base / s, classes, limit_per_file, size) for s in ("train", "val")]
    return make_imageset("imagefolder", splits[0], splits[1], classes, options=f"limit={limit_per_file}|size={size}")


def _find_folder(root: Path) -> Path:
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    subs = [d for d in root.iterdir() if (d / "train").is_dir() and (d / "val").is_dir()] if root.is_dir() else []
    if len(subs) == 1:
        return subs[0]
    if len(subs) > 1:
        raise DataError(f"{root}: several folders hold train/ and val/ ({sorted(d.name for d in subs)}); pick one")
    raise missing("imagefolder", root, [root / "train", root / "val", root / "*/train"])


def _read_split(folder: Path, classes: tuple[str, ...], limit: int | None,
                size: int) -> tuple[torch.Tensor, torch.Tensor]:
    files: list[Path] = []
    labels: list[int] = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        if d.name not in classes:
            raise DataError(f"{d}: class {d.name!r} is not among the train classes")
        found = sorted(p for p in d.iterdir() if p.suffix.lower() in _SUFFIXES)[:limit]
        files += found
        labels += [classes.index(d.name)] * len(found)
    if not files:
        raise DataError(f"{folder}: no {sorted(_SUFFIXES)} images in any class folder")
    # PIL releases the GIL while decoding, so threads give a real speed-up here
    with ThreadPoolExecutor(max_workers=8) as pool:
        images = list(pool.map(lambda p: _read_image(p, size), files))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def _read_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG decodes at a reduced scale, still >= size
            out = ImageOps.fit(img.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
    except OSError as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from None
    return np.asarray(out, dtype=np.uint8)
