"""Turn a StudySpec and an Optuna trial into TrainConfigs.

Three roles get configs: the teacher, the baseline student (no KD: method ``ce``, same width,
seed, epochs and recipe as the distilled one, so a delta measures distillation alone) and the
distilled student. Sampling is define-by-run: a trial draws ``method`` first, then only that
method's params (``kd.temperature``, ``dkd.beta``...), so a trial's params are its method's.
"""

from __future__ import annotations

from typing import Any

from kdsweep.core.config import TrainConfig
from kdsweep.core.methods import LOSSES
from kdsweep.core.searchable import RECIPE, method_searchables
from kdsweep.study.spec import Choices, Param, Range, StudySpec


def _recipe_fields(recipe) -> dict[str, Any]:
    return recipe.model_dump()


def teacher_config(spec: StudySpec, device: str) -> TrainConfig:
    t = spec.teacher
    return TrainConfig(arch=t.arch, width=t.width, seed=t.seed, device=device, **_recipe_fields(t.recipe))


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
    values: dict[str, Any] = {"ema_decay": s.recipe.ema_decay, "lr": s.recipe.lr, "width": s.width, "method": method}
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
    method = spec.student.method
    if search.method is not None:
        method = str(_suggest(trial, "method", search.method))
    values = defaults(spec, method)
    for name in [s.name for s in RECIPE] + [s.name for s in method_searchables(method)]:
        p = search.get(name)
        if p is not None:
            values[name] = _suggest(trial, name, p)
    return values


def first_trials(spec: StudySpec) -> list[dict[str, Any]]:
    """Params fixed for a new study's first trials: each searched method once, so every method is tried
    before the sampler (which sees only finished trials) can settle on one. Empty when ``method`` is not
    searched from choices, or under the grid sampler (it enumerates every method itself)."""
    p = spec.search.method
    if not isinstance(p, Choices) or spec.sampler == "grid":
        return []
    return [{"method": m} for m in dict.fromkeys(p.choices)]


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


def baseline_config(spec: StudySpec, *, width: float, seed: int, device: str) -> TrainConfig:
    """The student trained without a teacher: method ce, and the student's own recipe."""
    s = spec.student
    return TrainConfig(arch=s.arch, width=width, seed=seed, device=device, **_recipe_fields(s.recipe))


def student_config(spec: StudySpec, values: dict[str, Any], *, seed: int, device: str) -> TrainConfig:
    s = spec.student
    method = values["method"]
    fields = {**_recipe_fields(s.recipe), "lr": values["lr"], "ema_decay": values["ema_decay"]}
    params = {x.param: values[x.name] for x in method_searchables(method)}
    if LOSSES.get(method).taps:  # the layers a feature method taps (empty: the models' defaults)
        fields.update(student_features=tuple(s.features), teacher_features=tuple(spec.teacher.features))
    return TrainConfig(arch=s.arch, width=values["width"], seed=seed, device=device, method=method,
                       method_params=params, **fields)
