"""Weights files from anywhere: kdsweep's own, bare state_dicts (.pt/.pth) and .safetensors.

``teacher.checkpoint`` uses a file as-is (every tensor must fit the model); ``teacher.init`` starts
from it and fine-tunes, re-creating a classifier head whose class count differs (an ImageNet file
on CIFAR-10). Pickled files load with ``torch.load(weights_only=True)`` only (core/checkpoint.py),
so a file carrying code is refused rather than run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from kdsweep.errors import CheckpointError

WRAPPERS = ("state_dict", "model")  # keys other tools wrap a state_dict in (kdsweep's own: state_dict)
PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile add these to every name


def file_digest(path: Path | str) -> str:
    """sha256 of the file's bytes, read in blocks (a weights file may be hundreds of MB)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    return h.hexdigest()


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file by name; CheckpointError (one line naming the file) when it has none."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        try:
            return _strip(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({str(exc)[:200]})") from None
    from kdsweep.core.checkpoint import load_checkpoint

    return unwrap(load_checkpoint(path), path)


def unwrap(payload: object, path: Path | str) -> dict[str, torch.Tensor]:
    """The state_dict inside a loaded file: bare, or under a ``state_dict``/``model`` key; prefixes stripped."""
    for key in WRAPPERS:
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not payload or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        raise CheckpointError(f"{path}: holds no state_dict of tensors (a mapping of names to tensors, bare or "
                              f"under {' or '.join(repr(k) for k in WRAPPERS)})")
    return _strip(payload)


def head_names(model: nn.Module) -> list[str]:
    """The state_dict names of the classifier head: timm's ``get_classifier()``, else the model's last
    ``nn.Linear`` (torchvision's ``fc``, ``classifier.N``, ``heads.head``; a user's final layer)."""
    head = None
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            head = get()
        except Exception:  # noqa: BLE001 - a user method of that name that wants arguments
            head = None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        linears = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        head = next((m for m in reversed(linears) if isinstance(m, nn.Linear)), linears[-1] if linears else None)
    if head is None:
        return []
    prefix = next(name for name, m in model.named_modules() if m is head)
    return [f"{prefix}.{k}" if prefix else k for k in head.state_dict()]


def mismatches(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Names missing from ``state``, names the model lacks, and names of another shape, in the model's order."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    other = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    return missing, extra, other


def fit_problem(model: nn.Module, state: dict[str, torch.Tensor], *, allowed: tuple[str, ...] = ()) -> str | None:
    """The first way ``state`` does not fit ``model`` (names ``allowed`` to differ excepted), or None."""
    expected = model.state_dict()
    missing, extra, other = (
        [k for k in names if k not in allowed] for names in mismatches(model, state))
    if other:
        k = other[0]
        return (f"tensor {k!r} is {list(state[k].shape)} in the file, {list(expected[k].shape)} in the model"
                + (f" ({len(other)} tensors differ)" if len(other) > 1 else ""))
    if missing:
        return f"tensor {missing[0]!r} is missing from the file ({len(missing)} missing)"
    if extra:
        return f"tensor {extra[0]!r} is not in the model ({len(extra)} such)"
    return None


def load_as_is(model: nn.Module, path: Path | str, what: str) -> nn.Module:
    """``teacher.checkpoint``: every tensor must fit, else CheckpointError naming the first that does not."""
    state = read_state_dict(path)
    problem = fit_problem(model, state)
    if problem:
        raise CheckpointError(f"{path}: does not fit {what}: {problem}")
    model.load_state_dict(state)
    return model


def replaced_head(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str, what: str) -> list[str]:
    """The head tensors ``init`` re-creates (the file's differ in shape); CheckpointError if anything
    else differs, since only the classifier may change with the class count."""
    _, _, other = mismatches(model, state)
    head = tuple(head_names(model))
    replaced = [k for k in other if k in head]
    problem = fit_problem(model, state, allowed=tuple(replaced))
    if problem:
        raise CheckpointError(f"{path}: does not fit {what} (only the classifier head {list(head)} may differ): "
                              f"{problem}")
    return replaced


def load_init(model: nn.Module, path: Path | str, what: str) -> list[str]:
    """``teacher.init``: load the file into ``model``, keeping the model's fresh head where the file's
    class count differs; returns the names of the head tensors re-created."""
    state = read_state_dict(path)
    replaced = replaced_head(model, state, path, what)
    kept = {k: v for k, v in state.items() if k not in replaced}
    model.load_state_dict({**model.state_dict(), **kept})
    return replaced
