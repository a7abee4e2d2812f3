"""Methods combined by name: ``kd+at`` is the sum of kd's and at's terms (the papers' "+KD" rows).

``LOSSES.get("kd+at")`` builds the combination on first use from the registered parts, so a
combination needs no file and the search draws it as one choice (``search.method: {choices: [kd,
kd+at]}``; ``student.method: [kd, at]`` is the same). Its params are its parts', named
``<part>.<param>`` (``kd.alpha``, ``at.at_weight``) and searched or fixed under each part's own name
(``search.kd.alpha``, ``student.at.at_weight``). Terms of the same name (every part's ``ce``) add up,
so each logged term is still the sum of what was trained under that name. At most one part may be a
feature method (one set of taps and one connector per run); ``ce`` adds nothing and is refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from kdsweep.core.methods.base import Method, Terms

SEP = "+"


def split(name: str) -> list[str]:
    return name.split(SEP)


def params_of(part: str, params: Mapping[str, float]) -> dict[str, float]:
    """A part's own params out of a combination's ``<part>.<param>`` dict."""
    head = part + "."
    return {k[len(head):]: v for k, v in params.items() if k.startswith(head)}


def combine(name: str, parts: list[Method]) -> Method:
    """The method ``name`` (``a+b``) made of ``parts``; ValueError on a combination that cannot run."""
    names = [m.name for m in parts]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"KD method {name!r}: a combination names two or more different methods")
    if "ce" in names:
        raise ValueError(f"KD method {name!r}: every method already has its cross-entropy term; drop 'ce'")
    feature = [m for m in parts if m.taps]
    if len(feature) > 1:
        raise ValueError(f"KD method {name!r}: combine one feature method with logit methods, not "
                         f"{[m.name for m in feature]}")

    def terms(student_logits, targets, teacher_logits, params, epoch, *, label_smoothing=0.0, feats=None) -> Terms:
        out: Terms = {}
        for m in parts:
            extra = {"feats": feats} if m.taps else {}
            for k, v in m.terms(student_logits, targets, teacher_logits, params_of(m.name, params), epoch,
                                label_smoothing=label_smoothing, **extra).items():
                out[k] = out[k] + v if k in out else v
        return out

    connector = None
    if feature and feature[0].connector is not None:
        part = feature[0]

        def connector(shapes, params):
            return part.connector(shapes, params_of(part.name, params))

    return Method(
        name=name,
        params=tuple(replace(p, name=f"{m.name}.{p.name}") for m in parts for p in m.params),
        terms=terms, needs_teacher=any(m.needs_teacher for m in parts),
        summary=" + ".join(m.name for m in parts) + ": the sum of their terms",
        taps=frozenset().union(*(m.taps for m in parts)), connector=connector,
    )
