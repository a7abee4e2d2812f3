"""Where a model comes from: one arch string, one parser, one builder call (timm's ``create_model`` idea).

An arch string names its source by its form:

=========================  ===========================================================================
``NAME``                   a built-in model (``MODELS``), else a plugin's name (entry-point group
                           ``kdsweep.models``)
``torchvision:NAME``       ``torchvision.models.get_model(NAME, weights=None, num_classes=C, **arch_args)``
``timm:NAME``              ``timm.create_model(NAME, pretrained=False, num_classes=C, **arch_args)``
``FILE.py:CALLABLE``       the user's ``CALLABLE(num_classes=C, **arch_args)`` from that file (a relative
                           file is read against ``base_dir``, the spec file's folder)
``package.module:CALL``    the same, from an importable module
=========================  ===========================================================================

Only built-ins take ``width`` and ``in_channels``: the other sources build the network their author
wrote, so a width other than 1 is refused (:func:`scales_with_width` says which archs scale).
Nothing here downloads: torchvision and timm are always asked for untrained weights.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from kdsweep.core.models.registry import FIXED_WIDTH, MODELS

if TYPE_CHECKING:
    from torch import nn

ENTRY_POINT_GROUP = "kdsweep.models"
SCHEMES = ("torchvision", "timm")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOAD_LOCK = threading.Lock()  # trials in threads may load the same user file at once


class ArchError(ValueError):
    """An arch string that does not name a buildable model; the message says what was wrong."""


@dataclass(frozen=True)
class ArchRef:
    """A parsed arch string: ``source`` is builtin, plugin, torchvision, timm, file or module."""

    arch: str  # as written (a file made absolute by resolve_arch)
    source: str
    name: str  # the registry/torchvision/timm/plugin name, or the callable's name
    location: str = ""  # the file's path or the module's dotted name


def parse_arch(arch: str) -> ArchRef:
    """Split an arch string into its source and name; raise ArchError on a form that fits none.

    Only the text is read here (no import, no file access), so a spec is checked in microseconds.
    """
    if not isinstance(arch, str) or not arch.strip():
        raise ArchError("empty architecture name")
    scheme, sep, rest = arch.partition(":")
    if sep and scheme in SCHEMES:
        if not rest:
            raise ArchError(f"{scheme}: needs a model name after the colon, e.g. {scheme}:resnet18")
        return ArchRef(arch, scheme, rest)
    if ":" not in arch:
        if arch in MODELS:
            return ArchRef(arch, "builtin", arch)
        return ArchRef(arch, "plugin", arch)
    location, _, name = arch.rpartition(":")
    if not _NAME.fullmatch(name):
        raise ArchError(f"{name!r} after the last colon is not a Python name (FILE.py:CALLABLE or "
                        "package.module:CALLABLE)")
    if location.endswith(".py"):
        return ArchRef(arch, "file", name, location)
    if _MODULE.fullmatch(location):
        return ArchRef(arch, "module", name, location)
    raise ArchError(f"{location!r} is neither a .py file nor a dotted module name (the forms: NAME, torchvision:NAME, "
                    "timm:NAME, FILE.py:CALLABLE, package.module:CALLABLE)")


def resolve_arch(arch: str, base_dir: Path | str | None) -> str:
    """The arch string with a relative ``FILE.py`` made absolute against ``base_dir`` (the spec's folder).

    Anything else comes back unchanged, so this is safe to call on every arch string.
    """
    try:
        ref = parse_arch(arch)
    except ArchError:
        return arch
    if ref.source != "file" or base_dir is None:
        return arch
    path = Path(ref.location).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    return f"{path.resolve()}:{ref.name}"


def plugins() -> dict[str, Any]:
    """The names pip-installed packages add through the ``kdsweep.models`` entry-point group."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_problem(arch: str) -> str | None:
    """What is wrong with ``arch`` that the text (and a file's existence) shows, or None.

    Light enough for spec validation: no import of torchvision, timm or the user's module.
    """
    try:
        ref = parse_arch(arch)
    except ArchError as exc:
        return str(exc)
    if ref.source == "plugin" and ref.name not in plugins():
        return (f"unknown architecture; choose from {MODELS.names()}, or write torchvision:NAME, timm:NAME, "
                "FILE.py:CALLABLE or package.module:CALLABLE")
    if ref.source == "file":
        try:
            found = Path(ref.location).is_file()
        except OSError as exc:
            return f"{ref.location}: cannot be read: {exc.strerror or exc}"
        if not found:
            return f"{ref.location}: file does not exist"
    return None


def scales_with_width(arch: str) -> bool:
    """Whether ``width`` means something for this arch: only built-in families declare it."""
    try:
        ref = parse_arch(arch)
    except ArchError:
        return False
    return ref.source == "builtin" and ref.name not in FIXED_WIDTH


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=64)  # packages_distributions() reads every installed package's metadata
def _dist_version(module: str) -> str:
    """The installed distribution's version of a module's top package, or ``?`` (a plain folder on sys.path)."""
    top = module.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unversioned"


def identity(arch: str) -> str:
    """Which builder and which version of it ``arch`` resolves to: the model's provenance.

    ``builtin``; ``torchvision 0.29.1``; ``timm 1.0.31``; ``file /abs/mynets.py sha256:<64 hex>``;
    ``module pkg.mod (dist 1.2)``; ``plugin NAME (dist 1.2)``. A user file's digest is of its bytes,
    so an edited file is another model (a teacher trained from it is not reused).
    """
    ref = parse_arch(arch)
    if ref.source == "builtin":
        return "builtin"
    if ref.source in SCHEMES:
        try:
            return f"{ref.source} {importlib.metadata.version(ref.source)}"
        except importlib.metadata.PackageNotFoundError:
            return f"{ref.source} (not installed)"
    if ref.source == "file":
        path = Path(ref.location)
        try:
            return f"file {path} sha256:{_file_digest(path)}"
        except OSError as exc:
            return f"file {path} (unreadable: {exc.strerror or exc})"
    if ref.source == "module":
        return f"module {ref.location} ({_dist_version(ref.location)})"
    ep = plugins().get(ref.name)
    dist = getattr(ep, "dist", None) if ep is not None else None
    return f"plugin {ref.name} ({dist.name} {dist.version})" if dist is not None else f"plugin {ref.name}"


def _load_file(path: Path) -> Any:
    # The module is named after the file's digest: an edited file loads as a new module, and two
    # files of one name in different folders do not collide in sys.modules.
    name = f"kdsweep_user_{path.stem}_{_file_digest(path)[:12]}"
    with _LOAD_LOCK:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ArchError(f"{path}: cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def builder(arch: str) -> Callable[..., nn.Module]:
    """The callable that builds ``arch`` (keyword ``num_classes`` plus its args); ArchError says why not."""
    ref = parse_arch(arch)
    if ref.source == "builtin":
        return MODELS.get(ref.name)
    if ref.source == "torchvision":
        import torchvision

        if ref.name not in torchvision.models.list_models():
            raise ArchError(f"torchvision {torchvision.__version__} has no model {ref.name!r}")
        return lambda **kw: torchvision.models.get_model(ref.name, weights=None, **kw)
    if ref.source == "timm":
        try:
            import timm
        except ImportError as exc:
            raise ArchError(f"timm is not installed ({_first_line(exc)}); pip install 'kdsweep[timm]'") from None
        if not timm.is_model(ref.name):
            raise ArchError(f"timm {timm.__version__} has no model {ref.name!r}")
        return lambda **kw: timm.create_model(ref.name, pretrained=False, **kw)
    if ref.source == "plugin":
        ep = plugins().get(ref.name)
        if ep is None:
            raise ArchError(f"unknown model {ref.name!r}; choose from {MODELS.names()}, or write torchvision:NAME, "
                            "timm:NAME, FILE.py:CALLABLE or package.module:CALLABLE")
        try:
            return ep.load()
        except Exception as exc:  # noqa: BLE001 - the plugin's own import failing, whatever it raises
            raise ArchError(f"plugin {ref.name!r} ({ep.value}) does not load: {_first_line(exc)}") from None
    try:
        module = _load_file(Path(ref.location)) if ref.source == "file" else importlib.import_module(ref.location)
    except FileNotFoundError:
        raise ArchError(f"{ref.location}: file does not exist") from None
    except Exception as exc:  # noqa: BLE001 - the user's module: a SyntaxError, an ImportError, anything
        raise ArchError(f"{ref.location} does not import: {_first_line(exc)}") from None
    fn = getattr(module, ref.name, None)
    if fn is None:
        raise ArchError(f"{ref.location} has no {ref.name!r}")
    if not callable(fn):
        raise ArchError(f"{ref.location}:{ref.name} is a {type(fn).__name__}, not a callable")
    return fn


def build_model(arch: str, *, num_classes: int, width: float = 1.0, in_channels: int = 3,
                arch_args: Mapping[str, Any] | None = None, base_dir: Path | str | None = None) -> nn.Module:
    """Build any arch string's model for ``num_classes`` classes; the one builder call.

    Args:
        arch: ``NAME``, ``torchvision:NAME``, ``timm:NAME``, ``FILE.py:CALLABLE`` or ``package.module:CALLABLE``.
        num_classes: size of the classifier head.
        width: channel multiplier, built-ins only (others must keep 1.0).
        in_channels: input channels, built-ins only (others must keep 3).
        arch_args: keyword arguments passed to the builder (e.g. timm's ``drop_path_rate``).
        base_dir: folder a relative ``FILE.py`` is read against (the spec file's).

    Raises:
        ArchError (a ValueError) naming what was wrong: the import error's message, a missing callable,
        a builder that returned something other than an ``nn.Module``, width on a fixed-width model.
    """
    arch = resolve_arch(arch, base_dir)
    ref = parse_arch(arch)
    args = dict(arch_args or {})
    make = builder(arch)
    if ref.source == "builtin":
        return make(num_classes=num_classes, width=width, in_channels=in_channels, **args)
    if width != 1.0:
        raise ArchError(f"{arch} has a fixed width (only built-in models scale); width must be 1.0, got {width!r}")
    if in_channels != 3:
        raise ArchError(f"{arch} takes 3-channel images; in_channels={in_channels!r} works with built-ins only")
    try:
        model = make(num_classes=num_classes, **args)
    except Exception as exc:  # noqa: BLE001 - the builder's own failure (a bad arch_args key, a bug)
        raise ArchError(f"{arch}(num_classes={num_classes}{''.join(f', {k}={v!r}' for k, v in args.items())}) "
                        f"failed: {_first_line(exc)}") from None
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ArchError(f"{arch} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
