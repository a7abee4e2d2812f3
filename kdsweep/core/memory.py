"""Which loader reads the data: resident (decoded once, held in memory) or stream (decoded per batch).

``data.loader: auto`` keeps the resident loader while the decoded splits (uint8, 3 x S x S per
image at the resident size S) fit ``data.memory_budget`` (default a quarter of the machine's
RAM) and streams otherwise; ``open_data`` returns the data with ``loader_note`` saying which and why.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kdsweep.errors import DataError

LOADERS = ("auto", "resident", "stream")
STREAMABLE = ("imagefolder", "manifest", "hf_disk")  # formats that list images; cifar is read whole
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(value: int | str) -> int:
    """``4GB`` -> 4e9, ``512MiB`` -> 512 * 2**20, ``1000`` -> 1000; ValueError quoting a bad value."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if m is None or m.group(2).upper() not in _UNITS:
            raise ValueError(f"{value!r} is not a byte count (e.g. 1000000, '512MB', '4GB', '2GiB')")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"{value!r}: a memory budget must be more than 0 bytes")
    return n


def default_budget() -> int:
    """A quarter of the machine's RAM."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def human(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def choose(requested: str, *, images: int, size: int, budget: int, augment: str) -> tuple[str, str]:
    """(loader, why) for ``images`` images held at ``size`` px under ``budget`` bytes."""
    decoded = images * 3 * size * size
    if requested != "auto":
        return requested, f"data.loader={requested}"
    if augment == "imagenet":
        return "stream", "data.augment=imagenet crops each full image, which only the stream loader holds"
    if decoded <= budget:
        return "resident", f"{images} images decode to {human(decoded)} at {size}px, within data.memory_budget {human(budget)}"
    return "stream", f"{images} images decode to {human(decoded)} at {size}px, over data.memory_budget {human(budget)}"


def open_data(dataset: str, root: Path | str, *, loader: str = "auto", memory_budget: int | None = None,
              augment: str = "cifar", image_size: int | None = None, workers: int = 2, max_bad_images: int = 0,
              limit_per_file: int | None = None, image_column: str = "image", label_column: str = "label"):
    """The data set read by the chosen loader: an ImageSet (resident) or a LazySet (stream), with ``loader_note``."""
    import dataclasses

    from kdsweep.core.datasets import DEFAULT_IMAGE_SIZE, load_dataset
    from kdsweep.core.formats import list_dataset
    from kdsweep.core.lazyset import StreamOptions, decode_resident

    if loader not in LOADERS:
        raise ValueError(f"loader={loader!r}; choose from {list(LOADERS)}")
    if dataset not in STREAMABLE:
        if loader == "stream":
            raise DataError(f"data.loader=stream: {dataset} is read whole; stream reads {list(STREAMABLE)}")
        return load_dataset(dataset, root, limit_per_file=limit_per_file, image_size=image_size)  # no choice to note
    size = image_size or (224 if augment == "imagenet" else DEFAULT_IMAGE_SIZE)
    options = StreamOptions(augment=augment, image_size=size, workers=workers, max_bad_images=max_bad_images)
    lazy = list_dataset(dataset, root, options=options, limit_per_file=limit_per_file, image_column=image_column,
                        label_column=label_column)
    budget = memory_budget if memory_budget is not None else default_budget()
    chosen, why = choose(loader, images=len(lazy.train) + len(lazy.test), size=size, budget=budget, augment=augment)
    if chosen == "stream":
        return dataclasses.replace(lazy, loader_note=f"stream ({why})")
    if augment == "imagenet":
        raise DataError("data.augment=imagenet: random-resized crops need the full images; use data.loader: "
                        "stream or auto")
    if dataset == "imagefolder":  # the resident reader as before, so existing caches keep their identity
        data = load_dataset(dataset, root, limit_per_file=limit_per_file, image_size=image_size)
    else:
        data = decode_resident(lazy, size)
    return dataclasses.replace(data, loader_note=f"resident ({why})")
