"""Turn a StudySpec and an Optuna trial into TrainConfigs.

Three roles get configs: the teacher, the baseline student (no KD, same width, seed, epochs and
recipe as the distilled one, so a delta measures distillation alone) and the distilled student.
"""

from __future__ import annotations

from typing import Any

from kdsweep.core.config import TrainConfig
from kdsweep.study.spec import Choices, Range, Recipe, StudySpec

SEARCHABLE = ("temperature", "alpha", "ema_decay", "lr", "width")


def _recipe_fields(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump()


def teacher_config(spec: StudySpec, device: str) -> TrainConfig:
    t = spec.teacher
    return TrainConfig(arch=t.arch, width=t.width, seed=t.seed, device=device, **_recipe_fields(t.recipe))


def defaults(spec: StudySpec) -> dict[str, float]:
    """The student's values for everything not searched."""
    s = spec.student
    return {"temperature": s.temperature, "alpha": s.alpha, "ema_decay": s.recipe.ema_decay,
            "lr": s.recipe.lr, "width": s.width}


def sample(trial, spec: StudySpec) -> dict[str, float]:
    """Ask the trial for every searched value; fixed values are recorded as user attributes."""
    values = defaults(spec)
    for name, p in spec.search.items():
        if isinstance(p, Range):
            if p.step is not None:
                values[name] = trial.suggest_float(name, p.low, p.high, step=p.step)
            else:
                values[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif isinstance(p, Choices):
            values[name] = trial.suggest_categorical(name, list(p.choices))
        else:
            values[name] = float(p)
    return values


def grid_space(spec: StudySpec) -> dict[str, list[float]]:
    """Search space for Optuna's GridSampler (choices, or ranges with a step)."""
    grid: dict[str, list[float]] = {}
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
        return list(p.choices)
    if isinstance(p, Range):
        return grid_space(spec)["width"] if p.step is not None else None
    return [float(p)]


def baseline_config(spec: StudySpec, *, width: float, seed: int, device: str) -> TrainConfig:
    """The student trained without a teacher: alpha 0, and the student's own recipe."""
    s = spec.student
    fields = _recipe_fields(s.recipe)
    return TrainConfig(arch=s.arch, width=width, seed=seed, device=device, alpha=0.0, **fields)


def student_config(spec: StudySpec, values: dict[str, float], *, seed: int, device: str) -> TrainConfig:
    s = spec.student
    fields = {**_recipe_fields(s.recipe), "lr": values["lr"], "ema_decay": values["ema_decay"]}
    return TrainConfig(arch=s.arch, width=values["width"], seed=seed, device=device,
                       temperature=values["temperature"], alpha=values["alpha"], **fields)

