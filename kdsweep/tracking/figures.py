"""The report's figures, declared once, and the two renderers that draw every one of them.

Each figure is a row of a table: its name, the drawing function's name and the numbers it takes.
``plots`` (PNG, matplotlib) and ``charts`` (interactive, plotly) each have a function of every
such name taking the same numbers, so a figure added here is drawn by both; Optuna's own plots
are rows too (``optuna_calls``), drawn by each renderer's ``optuna_figure`` from
``optuna.visualization`` (matplotlib or plotly). A renderer whose library is missing draws
nothing and says how to install it.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Any

from kdsweep.tracking.report import Report

MIN_TRIALS_FOR_IMPORTANCE = 4  # with a handful of trials an importance split is noise that looks like a finding
PARETO_AXES = {"params": {"xlabel": "student parameters", "title": "accuracy vs student size"},
               "latency_ms": {"xlabel": "latency, ms per image at batch 1", "title": "accuracy vs student latency"}}
PARETO_COST = {"params": "parameters", "latency_ms": "latency ms"}

Calls = dict[str, tuple[str, tuple, dict]]  # figure name -> (drawing function, args, kwargs)


@dataclass(frozen=True)
class Renderer:
    module: str  # draws every figure of the table (a function per drawing-function name)
    needs: str  # the library it draws with
    missing: str  # the note when that library is not installed

    def load(self):
        """The renderer's module, or None when its library is missing."""
        try:
            importlib.import_module(self.needs)
        except ImportError:
            return None
        return importlib.import_module(self.module)


RENDERERS = {
    "png": Renderer("kdsweep.tracking.plots", "matplotlib", "plots need matplotlib: pip install 'kdsweep[plots]'"),
    "plotly": Renderer("kdsweep.tracking.charts", "plotly",
                       "interactive plots need plotly: pip install 'kdsweep[plots]'"),
}


def varied_params(report: Report) -> list[tuple[str, list, list[str]]]:
    """Per method: its trials, and the params (its own and the recipe's) those trials varied."""
    out = []
    for method in report.methods:
        trials = [t for t in report.trials if t.method == method]
        varied = sorted(k for k in {k for t in trials for k in t.params}
                        if (k.startswith(f"{method}.") or "." not in k) and len({t.params.get(k) for t in trials}) > 1)
        out.append((method, trials, varied))
    return out


def figure_calls(report: Report) -> Calls:
    """One study's figures."""
    teacher, baseline, distilled = report.rows[:3]
    many_archs = len(report.archs) > 1
    calls = {
        "accuracy_per_epoch": ("epoch_curves", (
            {"teacher": teacher.curves, "baseline student": baseline.curves, distilled.label: distilled.curves},),
            {"title": f"{report.study}: test accuracy per epoch"}),
        "gains_forest": ("forest_plot", ([(r.label, r.gain) for r in report.rows if r.gain is not None and r.gain.n > 1],),
                         {"title": f"{report.study}: gain over the matched baseline, 95% CI"}),
        "pareto_front": ("pareto_plot", ([(t.cost(report.pareto_by), t.selected_by, t.on_front,
                                           f"trial {t.trial}" + (f" ({t.arch})" if many_archs else ""))
                                          for t in report.trials],), PARETO_AXES[report.pareto_by]),
    }
    if report.trials:
        best = report.trials[0]
        calls["loss_terms_best_trial"] = ("epoch_curves", (report.best_terms,), {
            "title": f"{report.study}: loss terms of trial {best.trial} ({best.method}), per epoch",
            "ylabel": "loss term", "scale": 1.0})
    for method, trials, varied in varied_params(report):  # accuracy against each param a method's trials varied
        calls[f"accuracy_vs_params_{method}"] = ("param_scatter", (
            [(t.trial, t.params, t.test_acc) for t in trials], varied), {})
    return calls


def compare_calls(reports: list[Report]) -> Calls:
    """Per role, each study's per-epoch test accuracy on one figure (the compared experiments)."""
    return {f"compare_{role}": ("epoch_curves", ({r.study: r.rows[i].curves for r in reports},),
                                {"title": f"{role}: test accuracy per epoch"})
            for i, role in enumerate(("teacher", "baseline", "distilled"))}


def optuna_calls(study, pareto_by: str = "params") -> tuple[Calls, list[str]]:
    """Optuna's optimisation history, parameter importances, parallel coordinates (and its Pareto
    front for two objectives), as functions of ``optuna.visualization``; notes on those left out."""
    import optuna

    multi = len(study.directions) > 1
    # accuracy, the first objective (validation; the test split's only under selection: test)
    kw = {"target": lambda t: t.values[0], "target_name": "accuracy"} if multi else {}
    calls: Calls = {
        "optuna_history": ("plot_optimization_history", (), kw),
        "optuna_importances": ("plot_param_importances", (), kw),
        "optuna_parallel": ("plot_parallel_coordinate", (), kw),
    }
    if multi:
        calls["optuna_pareto"] = ("plot_pareto_front", (), {"target_names": ["accuracy", PARETO_COST[pareto_by]]})
    notes = []
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    if done < MIN_TRIALS_FOR_IMPORTANCE:
        del calls["optuna_importances"]
        notes.append(f"optuna_importances: skipped, needs at least {MIN_TRIALS_FOR_IMPORTANCE} finished trials "
                     f"(has {done})")
    return calls, notes


def draw(backend, calls: Calls) -> dict[str, Any]:
    """Every figure of ``calls`` that ``backend`` draws (None: nothing to draw, left out)."""
    figures = {}
    for name, (function, args, kwargs) in calls.items():
        figure = getattr(backend, function)(*args, **kwargs)
        if figure is not None:
            figures[name] = figure
    return figures


def draw_optuna(backend, study, pareto_by: str = "params") -> tuple[dict[str, Any], list[str]]:
    """Optuna's figures drawn by ``backend.optuna_figure``, and a note for each it could not draw."""
    import optuna

    calls, notes = optuna_calls(study, pareto_by)
    figures = {}
    for name, (function, _, kwargs) in calls.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning, and "too few trials" said in the note
                figure = backend.optuna_figure(function, study, **kwargs)
        except (ValueError, RuntimeError, optuna.exceptions.OptunaError) as exc:
            notes.append(f"{name}: skipped ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            continue
        if figure is None:
            notes.append(f"{name}: nothing to draw (too few finished trials or searched parameters)")
        else:
            figures[name] = figure
    return figures, notes


def report_figures(report: Report, kind: str, optuna_study=None) -> tuple[dict[str, Any], list[str]]:
    """Every figure of one study drawn by renderer ``kind`` (``png`` or ``plotly``), and notes."""
    renderer = RENDERERS[kind]
    backend = renderer.load()
    if backend is None:
        return {}, [renderer.missing]
    figures, notes = draw(backend, figure_calls(report)), []
    if optuna_study is not None:
        more, notes = draw_optuna(backend, optuna_study, report.pareto_by)
        figures.update(more)
    return figures, notes


def compare_figures(reports: list[Report], kind: str) -> tuple[dict[str, Any], list[str]]:
    renderer = RENDERERS[kind]
    backend = renderer.load()
    return (draw(backend, compare_calls(reports)), []) if backend is not None else ({}, [renderer.missing])
