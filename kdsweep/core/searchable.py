"""Every value a study can search, declared once: name, kind, bounds, and the method that owns it.

Spec validation, Optuna sampling, the MLflow params of a run, the report's columns and the plots
all derive from :func:`searchables`. The recipe's values (``ema_decay``, ``lr``, ``width``),
the KD method itself (``method``) and the student's architecture (``arch``) belong to every trial; each method's params (``kd.alpha``,
``dkd.beta``, ...) come from that method's declaration in ``kdsweep.core.methods`` and are drawn
only in trials that draw their method. A new method file adds its params here without an edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from kdsweep.core.methods import LOSSES, MethodParam

Kind = Literal["float", "method", "arch"]


@dataclass(frozen=True)
class Searchable:
    name: str  # the Optuna param name, the MLflow param key, the path under ``search:``
    kind: Kind
    check: Callable[[float], str | None]  # None when a value is in bounds, else what is wrong
    method: str | None = None  # the method that owns it; None: every trial has it
    param: str = ""  # the owning method's name for it (``beta`` of ``dkd.beta``)
    help: str = ""


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _ema(v: float) -> str | None:
    return None if 0 <= v < 1 else "must lie in [0, 1) (0 turns EMA off)"


def _method(v) -> str | None:
    if isinstance(v, str) and "+" in v:  # a combination (kd+at): say what is wrong with it
        try:
            LOSSES.get(v)
        except ValueError as exc:
            return str(exc)
    return None if isinstance(v, str) and v in LOSSES else f"unknown KD method; choose from {LOSSES.names()}"


def _arch(v) -> str | None:
    # any arch string a study takes (core/models/sources.py), checked from its text and a file's existence;
    # the preflight builds each one before anything is created
    from kdsweep.core.models.sources import known_problem

    return known_problem(v) if isinstance(v, str) else "is not an arch string"


RECIPE = (
    Searchable("ema_decay", "float", _ema, help="EMA weight of the old average per step"),
    Searchable("lr", "float", _positive, help="peak learning rate"),
    Searchable("width", "float", _positive, help="the student's channel multiplier"),
)
METHOD = Searchable("method", "method", _method, help="the KD method (a name in LOSSES)")
# the student's architecture: drawn before width, and width is drawn only for archs that scale
ARCH = Searchable("arch", "arch", _arch, help="the student's architecture (its own baselines per seed)")


def _from_method(method: str, p: MethodParam) -> Searchable:
    return Searchable(f"{method}.{p.name}", "float", p.check, method=method, param=p.name, help=p.help)


def searchables() -> list[Searchable]:
    """The recipe's values, ``method``, then every method's params (methods by name)."""
    out = [*RECIPE, METHOD, ARCH]
    for name in LOSSES.names():
        out += [_from_method(name, p) for p in LOSSES.get(name).params]
    return out


def by_name() -> dict[str, Searchable]:
    return {s.name: s for s in searchables()}


def method_searchables(method: str) -> list[Searchable]:
    """The params of ``method``, as searchables; a combination's (``kd+at``) are its parts', each
    searched under its part's name (``kd.alpha``) and passed on as ``<part>.<param>``."""
    if "+" in method:
        LOSSES.get(method)  # refuses a combination that cannot run
        return [Searchable(s.name, s.kind, s.check, method=s.method, param=s.name, help=s.help)
                for part in method.split("+") for s in method_searchables(part)]
    return [_from_method(method, p) for p in LOSSES.get(method).params]
