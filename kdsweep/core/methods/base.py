"""What a KD method is: named, bounded params and a function returning named, weighted loss terms.

Every method file builds one ``Method`` and registers it in ``LOSSES`` by name. The trainer calls
``method.loss(...)``; the training loss is exactly the sum of the returned terms, in dict order, so
each term can be logged on its own (``loss_<term>``) and the parts always add up to what was trained.

Conventions every ``terms`` function keeps:

- logits are cast to float32 first (bf16 autocast may hand in bf16 logits);
- each term is a 0-dim float32 tensor that already carries its weight;
- ``epoch`` is the 1-based epoch being trained, a Python number or a 0-dim tensor on the logits'
  device (CUDA-graph replays change it in place), so no ``.item()``/``float()`` on it and no Python
  branch on tensor values: nothing may sync with the host inside a captured step.

Importing a method file imports no torch: ``kdsweep study validate`` reads every method's name and
params (the spec's ``student.<method>`` and ``search.<method>`` fields) from these declarations,
and must stay light (torch alone is ~4 s and ~700 MB). So a method file imports torch, and any
module that does, inside its functions (``import torch`` as their first line), and names torch
types at the top only under ``TYPE_CHECKING``; tests/test_light_validate.py fails naming the
module that imported torch otherwise. Calls are cheap: the module is already loaded by then.
Classes that subclass a torch class (a feature method's connector, an ``nn.Module``) cannot be
declared that way: they live in ``kdsweep/core/methods/connectors/<method>.py`` (torch imported at
the top there), and the method's ``connector(shapes, params)`` builder imports its class inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

from kdsweep.core.registry import Registry

if TYPE_CHECKING:
    import torch

Terms = dict[str, "torch.Tensor"]


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class MethodParam:
    """One tunable number of a method: its published default and the range it makes sense in."""

    name: str  # e.g. "beta"
    default: float  # the published default, used when the spec does not set it
    low: float | None = None  # None: unbounded below
    high: float | None = None  # None: unbounded above
    low_inclusive: bool = True
    high_inclusive: bool = True
    help: str = ""  # one line: what it weights or means

    def check(self, value: float) -> str | None:
        """None when ``value`` is allowed, else why not (e.g. ``"must be > 0"``)."""
        if not math.isfinite(value):
            return "must be a finite number"
        below = self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive))
        above = self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive))
        if not (below or above):
            return None
        if self.low is not None and self.high is not None:
            left, right = "[" if self.low_inclusive else "(", "]" if self.high_inclusive else ")"
            return f"must lie in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"must be {'>=' if self.low_inclusive else '>'} {_num(self.low)}"
        return f"must be {'<=' if self.high_inclusive else '<'} {_num(self.high)}"  # type: ignore[arg-type]


@dataclass(frozen=True)
class Method:
    """A KD method: ``terms(student_logits, targets, teacher_logits, params, epoch, *, label_smoothing)``."""

    name: str
    params: tuple[MethodParam, ...]
    terms: Callable[..., Terms]  # weighted terms; params is the resolved dict
    needs_teacher: bool = True
    summary: str = ""  # one line for docs and CLI listings
    # learns from stored top-k soft labels (core/soft_labels.py: log p of the top k, the rest smoothed)
    # as well as from full logits; False for methods that read every logit (the non-target classes)
    top_k_labels: bool = False
    # feature methods (kdsweep.core.methods.features): what they read beside the logits ("stages",
    # "embedding", "index"); their terms get a ``feats=Features`` keyword. Empty: a logit method.
    taps: frozenset[str] = frozenset()
    # builds the method's trainable modules from the tapped shapes at run start: (FeatureShapes, params) -> Module
    connector: Callable[..., "torch.nn.Module"] | None = None

    def param(self, name: str) -> MethodParam:
        for p in self.params:
            if p.name == name:
                return p
        raise ValueError(f"method {self.name!r} has no param {name!r}; it takes {self.param_names() or 'none'}")

    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def resolve(self, given: Mapping[str, float]) -> dict[str, float]:
        """Every param of this method, ``given`` over the defaults; ValueError on unknown or bad values."""
        for name in given:
            self.param(name)  # raises naming the unknown param
        out: dict[str, float] = {}
        for p in self.params:
            raw = given.get(p.name, p.default)
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ValueError(f"{self.name}.{p.name}={str(raw)[:40]!r}: must be a number ({p.help})")
            value = float(raw)
            problem = p.check(value)
            if problem is not None:
                raise ValueError(f"{self.name}.{p.name}={raw!r}: {problem} ({p.help})")
            out[p.name] = value
        return out

    def loss(
        self,
        student_logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        params: Mapping[str, float],
        epoch: float | torch.Tensor,
        *,
        label_smoothing: float = 0.0,
        feats=None,
    ) -> tuple[torch.Tensor, Terms]:
        """(sum of the terms in dict order, the terms); ``feats``: a feature method's ``Features``."""
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"method {self.name!r} needs teacher logits")
        extra = {}
        if self.taps:
            if feats is None:
                raise ValueError(f"method {self.name!r} needs features ({sorted(self.taps)})")
            extra["feats"] = feats
        terms = self.terms(student_logits, targets, teacher_logits, params, epoch, label_smoothing=label_smoothing,
                           **extra)
        values = iter(terms.values())
        total = next(values)
        for term in values:
            total = total + term
        return total, terms


def hard_ce(student_logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy with the labels, in float32: the hard-label term every method shares."""
    import torch.nn.functional as F

    return F.cross_entropy(student_logits.float(), targets, label_smoothing=label_smoothing)


class MethodRegistry(Registry[Method]):
    """``LOSSES``: the registered methods, and their combinations by name (``kd+at``,
    kdsweep.core.methods.combined), built on first use; ``names()`` lists the registered ones."""

    def __init__(self) -> None:
        super().__init__("KD method")
        self._combined: dict[str, Method] = {}

    def get(self, name: str) -> Method:
        if isinstance(name, str) and "+" in name:
            if name not in self._combined:
                from kdsweep.core.methods.combined import combine, split

                self._combined[name] = combine(name, [super(MethodRegistry, self).get(part) for part in split(name)])
            return self._combined[name]
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and "+" in name:
            try:
                self.get(name)
            except ValueError:
                return False
            return True
        return super().__contains__(name)


LOSSES: MethodRegistry = MethodRegistry()


def register(method: Method) -> Method:
    """Add ``method`` to ``LOSSES`` under its name; refuses duplicate names and duplicate params."""
    names = method.param_names()
    if len(set(names)) != len(names):
        raise ValueError(f"method {method.name!r} declares a param twice: {names}")
    return LOSSES.register(method.name)(method)
