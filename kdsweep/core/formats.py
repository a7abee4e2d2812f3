"""The image-list formats a :class:`~kdsweep.core.lazyset.LazySet` is read from (``data.dataset``).

- ``imagefolder``: ``train/<class>/*`` and ``val/<class>/*`` (val is the test split), the
  torchvision/ImageNet layout; identity from each file's path, size and mtime.
- ``manifest``: ``data.root`` is a CSV or Parquet file with columns ``path,label,split``; paths
  are relative to the file, ``split`` is ``train`` or ``test``, labels are integers (classes
  ``0..max``) or class names (the sorted names of the training rows); identity from its bytes.
- ``hf_disk``: a Hugging Face ``datasets`` DatasetDict saved with ``save_to_disk`` (``train`` and
  ``test`` splits); images from ``image_column``, labels from ``label_column`` (a ClassLabel gives
  the names); identity from the splits' fingerprints.

Bad data found while listing (a missing or empty file, a label outside the classes, a class
with no training image, a split other than train/test) is a DataError naming the file and row.
Nothing here decodes pixels: that is the stream loader's job (or ``decode_resident``'s).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch

from kdsweep.core.lazyset import FileStore, ImageList, LazySet, StreamOptions, make_lazyset
from kdsweep.core.registry import Registry
from kdsweep.errors import DataError

FORMATS: Registry[Callable[..., LazySet]] = Registry("data format")
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def list_dataset(name: str, root: Path | str, *, options: StreamOptions = StreamOptions(),
                 limit_per_file: int | None = None, image_column: str = "image",
                 label_column: str = "label") -> LazySet:
    """The lazy set of format ``name`` at ``root`` (no image is decoded)."""
    return FORMATS.get(name)(Path(root), options=options, limit=limit_per_file, image_column=image_column,
                             label_column=label_column)


def _first_per_class(keys: list, labels: list[int], limit: int | None) -> tuple[list, list[int]]:
    if limit is None:
        return keys, labels
    seen: dict[int, int] = {}
    out_k, out_y = [], []
    for k, y in zip(keys, labels):
        seen[y] = seen.get(y, 0) + 1
        if seen[y] <= limit:
            out_k.append(k)
            out_y.append(y)
    return out_k, out_y


# ---------------------------------------------------------------- image folders


@FORMATS.register("imagefolder")
def folder_listing(root: Path, *, options: StreamOptions, limit: int | None = None, **_) -> LazySet:
    """``train/<class>/*`` and ``val/<class>/*`` under ``root`` or its single subfolder."""
    from kdsweep.core.datasets import _find_folder

    base = _find_folder(root)
    classes = tuple(sorted(d.name for d in os.scandir(base / "train") if d.is_dir()))
    digest = hashlib.sha256()
    splits = []
    for split in ("train", "val"):
        keys: list[str] = []
        labels: list[int] = []
        for d in sorted((e for e in os.scandir(base / split) if e.is_dir()), key=lambda e: e.name):
            if d.name not in classes:
                raise DataError(f"{d.path}: class {d.name!r} is not among the train classes")
            files = sorted(e.name for e in os.scandir(d.path) if os.path.splitext(e.name)[1].lower() in SUFFIXES)
            for name in files[:limit]:
                rel = f"{split}/{d.name}/{name}"
                st = os.stat(base / rel)
                if st.st_size == 0:
                    raise DataError(f"{base / rel}: unreadable image (an empty file)")
                digest.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
                keys.append(rel)
                labels.append(classes.index(d.name))
        if not keys:
            raise DataError(f"{base / split}: no {sorted(SUFFIXES)} images in any class folder")
        splits.append(ImageList(FileStore(base), keys, torch.tensor(labels, dtype=torch.int64)))
    return make_lazyset("imagefolder", splits[0], splits[1], classes, listing=f"{limit}|{digest.hexdigest()}",
                        options=options)


# ---------------------------------------------------------------- CSV / Parquet manifests

COLUMNS = ("path", "label", "split")


def _read_manifest(path: Path) -> dict[str, list]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises its own error types for bad files
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        cols = {c: table.column(c).to_pylist() for c in table.column_names if c in COLUMNS}
    else:
        import csv

        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            names = reader.fieldnames or []
        cols = {c: [r[c] for r in rows] for c in names if c in COLUMNS}
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; a manifest has columns path,label,split")
    return cols


@FORMATS.register("manifest")
def manifest_listing(root: Path, *, options: StreamOptions, limit: int | None = None, **_) -> LazySet:
    """``root`` is the manifest (CSV, or Parquet by its suffix); row numbers in errors count from 1."""
    if not root.is_file():
        raise DataError(f"{root}: no manifest file (data.root names a .csv or .parquet with path,label,split)")
    cols = _read_manifest(root)
    base = root.parent
    labels = [str(v).strip() for v in cols["label"]]
    numeric = all(v.lstrip("-").isdigit() for v in labels)
    splits = [str(s).strip() for s in cols["split"]]
    for row, s in enumerate(splits, 1):
        if s not in ("train", "test"):
            raise DataError(f"{root} row {row}: split {s!r}; use train or test")
    if numeric:
        ints = [int(v) for v in labels]
        classes = tuple(str(i) for i in range(max(ints) + 1))
    else:
        classes = tuple(sorted({v for v, s in zip(labels, splits) if s == "train"}))
    index = {c: i for i, c in enumerate(classes)}
    parts: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for row, (p, label, s) in enumerate(zip(cols["path"], labels, splits), 1):
        y = int(label) if numeric else index.get(label, -1)
        if y < 0 or y >= len(classes):
            raise DataError(f"{root} row {row}: {p}: label {label!r} is outside the classes "
                            f"({len(classes)} classes from the training rows)")
        file = base / str(p)
        try:
            size = file.stat().st_size
        except OSError as exc:
            raise DataError(f"{root} row {row}: {file}: unreadable image ({exc.strerror})") from None
        if size == 0:
            raise DataError(f"{root} row {row}: {file}: unreadable image (an empty file)")
        parts[s][0].append(str(p))
        parts[s][1].append(y)
    lists = []
    for s in ("train", "test"):
        keys, ys = _first_per_class(*parts[s], limit)
        if not keys:
            raise DataError(f"{root}: no {s} rows")
        lists.append(ImageList(FileStore(base), keys, torch.tensor(ys, dtype=torch.int64)))
    listing = f"{limit}|{hashlib.sha256(root.read_bytes()).hexdigest()}"
    return make_lazyset("manifest", lists[0], lists[1], classes, listing=listing, options=options)


# ---------------------------------------------------------------- Hugging Face save_to_disk


class ArrowStore:
    """Rows of one split of a ``save_to_disk`` folder; opened (memory-mapped) once per process."""

    def __init__(self, root: Path, split: str, column: str) -> None:
        self.root, self.split, self.column = root, split, column
        self._ds = None

    def __getstate__(self) -> dict:  # workers reopen the memory map rather than pickling the table
        return {**self.__dict__, "_ds": None}

    def _open(self):
        if self._ds is None:
            import datasets

            ds = datasets.load_from_disk(str(self.root))[self.split]
            self._ds = ds.cast_column(self.column, datasets.Image(decode=False))
        return self._ds

    def read(self, key: int) -> bytes:
        cell = self._open()[int(key)][self.column]
        if cell.get("bytes") is not None:
            return cell["bytes"]
        return Path(cell["path"]).read_bytes()

    def describe(self, key: int) -> str:
        return f"{self.root} {self.split} row {int(key)}"


@FORMATS.register("hf_disk")
def hf_listing(root: Path, *, options: StreamOptions, limit: int | None = None, image_column: str = "image",
               label_column: str = "label", **_) -> LazySet:
    """A DatasetDict saved with ``save_to_disk`` holding ``train`` and ``test``."""
    try:
        import datasets
    except ImportError:
        raise DataError("data.dataset='hf_disk' needs the datasets package: pip install 'kdsweep[data]'") from None
    try:
        dd = datasets.load_from_disk(str(root))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{root}: not a save_to_disk folder ({exc})") from None
    if not isinstance(dd, datasets.DatasetDict) or not {"train", "test"} <= set(dd):
        got = sorted(dd) if isinstance(dd, datasets.DatasetDict) else "one split"
        raise DataError(f"{root}: needs train and test splits (found {got})")
    feats = dd["train"].features
    for col in (image_column, label_column):
        if col not in feats:
            field = "data.image_column" if col == image_column else "data.label_column"
            raise DataError(f"{root}: {field}={col!r} is not a column (columns: {sorted(feats)})")
    label_feat = feats[label_column]
    lists, digest = [], hashlib.sha256()
    classes: tuple[str, ...] | None = tuple(label_feat.names) if hasattr(label_feat, "names") else None
    ys_all = {s: [int(v) for v in dd[s][label_column]] for s in ("train", "test")}
    if classes is None:
        classes = tuple(str(i) for i in range(max(ys_all["train"]) + 1))
    for s in ("train", "test"):
        keys, ys = _first_per_class(list(range(len(ys_all[s]))), ys_all[s], limit)
        digest.update(f"{s}|{dd[s]._fingerprint}|{len(dd[s])}\n".encode())
        lists.append(ImageList(ArrowStore(root, s, image_column), keys, torch.tensor(ys, dtype=torch.int64)))
    return make_lazyset("hf_disk", lists[0], lists[1], classes, listing=f"{limit}|{digest.hexdigest()}",
                        options=options)


# ---------------------------------------------------------------- read whole (the resident loader)


def _read_whole(name: str) -> Callable:
    def read(root: Path, *, limit_per_file: int | None = None, image_size: int | None = None):
        from kdsweep.core.datasets import DEFAULT_IMAGE_SIZE
        from kdsweep.core.lazyset import decode_resident

        size = image_size or DEFAULT_IMAGE_SIZE
        lazy = FORMATS.get(name)(Path(root), options=StreamOptions(image_size=size), limit=limit_per_file)
        return decode_resident(lazy, size)

    read.__doc__ = f"``{name}`` decoded whole into memory (see kdsweep.core.formats)."
    return read


def _register_whole() -> None:
    from kdsweep.core.datasets import DATASETS

    for name in ("manifest", "hf_disk"):
        if name not in DATASETS:
            DATASETS.register(name)(_read_whole(name))


_register_whole()
