"""Turn a StudySpec and an Optuna trial into TrainConfigs.

Three roles get configs: the teacher, the baseline student (no KD: method ``ce``, same width,
seed, epochs and recipe as the distilled one, so a delta measures distillation alone) and the
distilled student. Sampling is define-by-run: a trial draws ``method`` first, then only that
method's params (``kd.temperature``, ``dkd.beta``...), so a trial's params are its method's.
With ``search.arch`` a trial draws the student's architecture before anything else, and ``width``
only when that arch scales (the built-in families); other archs keep width 1.0. The baseline of a
trial is always of the trial's own arch.
"""

from __future__ import annotations

from typing import Any

from kdsweep.core.config import TrainConfig, arch_args_json
from kdsweep.core.methods import LOSSES
from kdsweep.core.searchable import RECIPE, method_searchables
from kdsweep.study.spec import Choices, Param, Range, StudySpec


def _recipe_fields(recipe) -> dict[str, Any]:
    return recipe.model_dump()


def teacher_config(spec: StudySpec, device: str) -> TrainConfig:
    t = spec.teacher
    return TrainConfig(arch=t.arch, width=t.width, seed=t.seed, device=device, arch_args=arch_args_json(t.arch_args),
                       init=str(t.init) if t.init is not None else "", **_recipe_fields(t.recipe))


def method_default(spec: StudySpec, method: str, param: str) -> float:
    """``student.<method>.<param>`` when set, else the method's published default."""
    if "+" in method:  # a combination's param is its part's: kd+at's kd.alpha is kd's alpha
        part, name = param.split(".", 1)
        return method_default(spec, part, name)
    given = spec.student.method_params(method)
    return given[param] if param in given else next(p.default for p in LOSSES.get(method).params if p.name == param)


def defaults(spec: StudySpec, method: str | None = None) -> dict[str, Any]:
    """The student's values for everything not searched (one method's params: ``method``'s)."""
    s = spec.student
    method = method or s.method
    values: dict[str, Any] = {"ema_decay": s.recipe.ema_decay, "lr": s.recipe.lr, "width": s.width, "method": method,
                              "arch": s.arch}
    values.update({x.name: method_default(spec, method, x.param) for x in method_searchables(method)})
    return values


def _suggest(trial, name: str, p: Param) -> Any:
    if isinstance(p, Range):
        if p.step is not None:
            return trial.suggest_float(name, p.low, p.high, step=p.step)
        return trial.suggest_float(name, p.low, p.high, log=p.log)
    if isinstance(p, Choices):
        return trial.suggest_categorical(name, list(p.choices))
    return p if isinstance(p, str) else float(p)


def sample(trial, spec: StudySpec) -> dict[str, Any]:
    """Ask the trial for the recipe's values and the method, then for that method's params only."""
    search = spec.search
    arch = str(_suggest(trial, "arch", search.arch)) if search.arch is not None else spec.student.arch
    method = spec.student.method
    if search.method is not None:
        method = str(_suggest(trial, "method", search.method))
    values = defaults(spec, method)
    values["arch"] = arch
    if not scales(arch):
        values["width"] = FIXED_WIDTH
    for name in [s.name for s in RECIPE] + [s.name for s in method_searchables(method)]:
        p = search.get(name)
        if p is not None and not (name == "width" and not scales(arch)):
            values[name] = _suggest(trial, name, p)
    return values


FIXED_WIDTH = 1.0  # the width of an arch that cannot scale (a torchvision, timm or user model)


def scales(arch: str) -> bool:
    """Whether ``width`` scales ``arch``: the built-in families do, models from other sources do not."""
    from kdsweep.core.models import scales_with_width

    return scales_with_width(arch)


def archs(spec: StudySpec) -> list[str]:
    """The student archs the trials can draw, in the spec's order."""
    p = spec.search.arch
    if p is None:
        return [spec.student.arch]
    return list(dict.fromkeys(str(v) for v in p.values())) if isinstance(p, Choices) else [str(p)]


def first_trials(spec: StudySpec) -> list[dict[str, Any]]:
    """Params fixed for a new study's first trials: each searched method and each searched arch once
    (paired in turn), so every one is tried before the sampler (which sees only finished trials) can
    settle on one. Empty when neither is searched from choices, or under the grid sampler (it
    enumerates them itself)."""
    if spec.sampler == "grid":
        return []
    lists = {name: list(dict.fromkeys(p.choices)) for name in ("method", "arch")
             if isinstance(p := spec.search.get(name), Choices)}
    n = max((len(v) for v in lists.values()), default=0)
    return [{name: v[i % len(v)] for name, v in lists.items()} for i in range(n)]


def grid_space(spec: StudySpec) -> dict[str, list]:
    """Search space for Optuna's GridSampler (choices, or ranges with a step)."""
    grid: dict[str, list] = {}
    for name, p in spec.search.items():
        if isinstance(p, Choices):
            grid[name] = list(p.choices)
        elif isinstance(p, Range):
            n = int(round((p.high - p.low) / p.step)) + 1
            grid[name] = [p.low + i * p.step for i in range(n)]
    return grid


def widths(spec: StudySpec) -> list[float] | None:
    """Every width the trials can use, when known in advance (None for a continuous range)."""
    p = spec.search.width
    if p is None:
        return [spec.student.width]
    if isinstance(p, Choices):
        return [float(v) for v in p.choices]
    if isinstance(p, Range):
        return grid_space(spec)["width"] if p.step is not None else None
    return [float(p)]


def baseline_config(spec: StudySpec, *, width: float, seed: int, device: str, arch: str | None = None) -> TrainConfig:
    """The student trained without a teacher: method ce, and the student's own recipe; ``arch``: the
    trial's (default ``student.arch``), so a delta is never taken across archs."""
    s = spec.student
    arch = arch or s.arch
    return TrainConfig(arch=arch, width=width, seed=seed, device=device,
                       arch_args=arch_args_json(arch_args_of(spec, arch)), **_recipe_fields(s.recipe))


def student_config(spec: StudySpec, values: dict[str, Any], *, seed: int, device: str) -> TrainConfig:
    s = spec.student
    method = values["method"]
    fields = {**_recipe_fields(s.recipe), "lr": values["lr"], "ema_decay": values["ema_decay"]}
    params = {x.param: values[x.name] for x in method_searchables(method)}
    if LOSSES.get(method).taps:  # the layers a feature method taps (empty: the models' defaults)
        fields.update(student_features=tuple(s.features), teacher_features=tuple(spec.teacher.features))
    arch = values.get("arch", s.arch)
    return TrainConfig(arch=arch, width=values["width"], seed=seed, device=device, method=method,
                       method_params=params, arch_args=arch_args_json(arch_args_of(spec, arch)), **fields)


def arch_args_of(spec: StudySpec, arch: str) -> dict[str, Any]:
    """``student.arch_args`` for the student's own arch; another arch the search draws takes its builder's defaults."""
    return dict(spec.student.arch_args) if arch == spec.student.arch else {}
