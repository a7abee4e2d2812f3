"""Atomic checkpoint files: a crash mid-write never leaves a half file under the real name."""

from __future__ import annotations

import errno
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsweep.errors import CheckpointError, DiskFullError


FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # disk full, file size limit, quota


def save_checkpoint(obj: Any, path: Path) -> Path:
    """Write ``obj`` with ``torch.save`` to a temp file beside ``path``, fsync, then rename.

    Serialised in memory first: torch's zip writer reports a full disk as an unrelated
    "unexpected pos" RuntimeError, a plain ``write`` as ENOSPC. A full disk raises
    ``DiskFullError``, and the file under ``path`` is still the previous one.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in FULL:
            raise DiskFullError(f"{path}: {exc.strerror} while writing a checkpoint") from exc
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in FULL:
            kept = "the previous one is kept" if path.exists() else "none was written before"
            raise DiskFullError(f"{path}: {exc.strerror} while writing a {buffer.tell() / 1e6:.1f} MB checkpoint "
                                f"({kept})") from None
        raise
    # fsync the folder so the rename itself survives a power loss
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _check_crc(path: Path) -> None:
    """torch.load does not verify the zip's CRC32s: a flipped bit in a tensor loads as a wrong
    weight. Reading every record once through zipfile does (fast: the records are stored, and
    crc32 runs in C)."""
    if not zipfile.is_zipfile(path):
        return  # not torch's zip format: torch.load below refuses it (or reads a legacy file)
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
    if bad is not None:
        raise CheckpointError(f"{path}: corrupted checkpoint (CRC mismatch in record {bad!r})")


def _unpickler_reason(exc: Exception) -> str:
    """The one line of torch's weights_only refusal that says why (the rest is advice on unsafe loading)."""
    text = str(exc)
    _, found, rest = text.partition("WeightsUnpickler error:")
    lines = [ln.strip() for ln in (rest if found else text).splitlines() if ln.strip()]
    reason = lines[0] if lines else type(exc).__name__
    return reason.split(" Please use ", 1)[0][:200]


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> Any:
    """Load with ``weights_only=True``; a truncated, corrupted or code-carrying file is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        _check_crc(path)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "Unsupported global" in reason:  # a class or function inside: would run code under weights_only=False
            raise CheckpointError(f"{path}: refused to load (not plain weights): {reason}") from exc
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({reason})") from exc
    except Exception as exc:  # noqa: BLE001 - random bytes make the legacy unpickler raise anything
        # (IndexError, KeyError, UnicodeDecodeError, EOFError, RuntimeError...): all mean a damaged file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint "
                              f"({type(exc).__name__}{': ' + first if first else ''})") from exc


def weights_payload(cfg, num_classes: int, model: nn.Module) -> dict[str, Any]:
    """A trained model as plain tensors plus what rebuilds it (``cfg``: its TrainConfig, for arch and width)."""
    rebuild = {"arch_args": cfg.arch_args} if getattr(cfg, "arch_args", "") else {}
    return {"arch": cfg.arch, "width": cfg.width, "num_classes": num_classes, **rebuild,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_weights(path: Path, arch: str, width: float, num_classes: int,
                 arch_args: dict[str, Any] | None = None) -> nn.Module:
    """Build ``arch`` and load weights saved by kdsweep, a bare state_dict or a .safetensors file
    (core/weights.py); every tensor must fit."""
    from kdsweep.core.models import build_model
    from kdsweep.core.weights import load_as_is

    model = build_model(arch, num_classes=num_classes, width=width, arch_args=arch_args)
    return load_as_is(model, path, f"{arch} x{width}")
