"""Placeholder of the methods interface (replaced by the methods branch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from kdsweep.core.registry import Registry


@dataclass(frozen=True)
class MethodParam:
    name: str
    default: float
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    help: str = ""

    def check(self, value: float) -> str | None:
        lo = self.low is None or (value >= self.low if self.low_inclusive else value > self.low)
        hi = self.high is None or (value <= self.high if self.high_inclusive else value < self.high)
        if lo and hi:
            return None
        if self.high is None:
            return f"must be {'>=' if self.low_inclusive else '>'} {self.low:g}"
        return f"must lie in {'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}{']' if self.high_inclusive else ')'}"


@dataclass(frozen=True)
class Method:
    name: str
    params: tuple[MethodParam, ...]
    terms: Callable[..., dict[str, torch.Tensor]]
    needs_teacher: bool = True
    summary: str = ""

    def resolve(self, given: Mapping[str, float]) -> dict[str, float]:
        known = {p.name: p for p in self.params}
        for name, value in given.items():
            if name not in known:
                raise ValueError(f"method {self.name!r} has no param {name!r}; its params: {sorted(known)}")
            problem = known[name].check(value)
            if problem:
                raise ValueError(f"{self.name}.{name}={value!r} {problem}")
        return {p.name: float(given.get(p.name, p.default)) for p in self.params}

    def loss(self, student_logits, targets, teacher_logits, params, epoch, *, label_smoothing=0.0):
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"method {self.name!r} needs teacher logits")
        terms = self.terms(student_logits, targets, teacher_logits, params, epoch, label_smoothing=label_smoothing)
        total = None
        for v in terms.values():
            total = v if total is None else total + v
        return total, terms


LOSSES: Registry[Method] = Registry("KD method")


def register(method: Method) -> Method:
    return LOSSES.register(method.name)(method)
