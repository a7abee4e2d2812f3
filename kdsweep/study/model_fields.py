"""Checks of the model fields of a study spec (``teacher``/``student``: ``arch_args``, ``width``, weights files).

Used by the schema's validators (study/schema.py); light: no model is built here (the preflight does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plain_args(v: dict[str, Any]) -> dict[str, Any]:
    """``arch_args``: keyword arguments of the builder, plain YAML values (they are logged and hashed as JSON)."""
    import json

    bad = [k for k in v if not (isinstance(k, str) and k.isidentifier())]
    if bad:
        raise ValueError(f"key {bad[0]!r} is not a keyword argument name")
    if "num_classes" in v:
        raise ValueError("num_classes comes from the data; leave it out of arch_args")
    try:
        json.dumps(v, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"values must be plain numbers, strings, booleans, lists or mappings ({exc})") from None
    return v


def width_fits(v: float, info) -> float:
    # a width for a model that cannot scale would be ignored or refused at every trial: refuse it once here
    from kdsweep.core.models.sources import scales_with_width

    arch = info.data.get("arch")
    if v != 1.0 and arch is not None and not scales_with_width(arch):
        raise ValueError(f"{arch} has a fixed width (only built-in models scale); leave width out or set 1.0")
    return v


def readable_file(v: Path | None, what: str) -> Path | None:
    try:
        found = v is None or v.is_file()
    except OSError as exc:  # a name too long, a folder we may not read
        raise ValueError(f"{what} file cannot be read: {exc.strerror or exc}") from None
    if not found:
        raise ValueError(f"{what} file does not exist")
    return v
