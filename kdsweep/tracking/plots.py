"""Report figures as PNG bytes: matplotlib on the Agg backend, so they render without a display.

Each function takes plain numbers (the report gathers them from MLflow and Optuna) and returns
the PNG, or None when there is nothing to draw. Optuna's own plots come from
``optuna.visualization.matplotlib``; a plot Optuna cannot draw for a study (too few finished
trials, a single searched value) is skipped with the reason, never faked.
"""

from __future__ import annotations

import io
import statistics
from typing import Sequence

# one curve: (epoch, accuracy) points of one run; a series: the runs of one role, one per seed
Curve = Sequence[tuple[int, float]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: CI, servers, a study running under nohup
    import matplotlib.pyplot as plt

    return plt


def to_png(fig) -> bytes:
    """Render and close ``fig`` (closing keeps pyplot from holding every figure of a long report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def epoch_curves(series: dict[str, list[Curve]], *, title: str, ylabel: str = "test accuracy %",
                 scale: float = 100.0) -> bytes | None:
    """Per epoch (test accuracy by default): per label the mean over seeds, with a min..max band when several."""
    series = {k: [c for c in v if c] for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, curves in series.items():
        epochs = sorted({e for c in curves for e, _ in c})
        by_epoch = [[a for c in curves for e2, a in c if e2 == e] for e in epochs]
        mean = [scale * statistics.fmean(v) for v in by_epoch]
        line, = ax.plot(epochs, mean, marker="o" if len(epochs) < 15 else None, ms=3,
                        label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        if len(curves) > 1:
            ax.fill_between(epochs, [scale * min(v) for v in by_epoch], [scale * max(v) for v in by_epoch],
                            color=line.get_color(), alpha=0.15, lw=0)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def param_scatter(points: Sequence[tuple[str, dict[str, float], list[float]]], names: Sequence[str]) -> bytes | None:
    """Final test accuracy of each trial (mean over seeds, bar = std) against each of ``names``;
    ``points`` are (trial, params, accuracy per seed), as for ``charts.param_scatter``."""
    names = [n for n in names if any(n in p for _, p, _ in points)]
    if not points or not names:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        xs = [(p[name], accs) for _, p, accs in points if name in p and accs]
        ax.errorbar([x for x, _ in xs], [100 * statistics.fmean(a) for _, a in xs],
                    yerr=[100 * statistics.stdev(a) if len(a) > 1 else 0 for _, a in xs], fmt="o", ms=4, capsize=2)
        ax.set(xlabel=name, title=f"accuracy vs {name}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final test accuracy %")
    return to_png(fig)


def forest_plot(rows: Sequence[tuple[str, object]], *, title: str) -> bytes | None:
    """Each row's paired gain (points) with its 95% interval (bars); the dashed line is no gain."""
    rows = [(label, g) for label, g in rows if g is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    for y, (_, g) in zip(ys, rows):
        ax.errorbar([100 * g.mean], [y], xerr=[[100 * (g.mean - g.low)], [100 * (g.high - g.mean)]],
                    fmt="o", capsize=3, color="C0" if g.distinguishable else "C7")
    ax.axvline(0, color="k", ls="--", lw=1)
    ax.set_yticks(ys, [label for label, _ in rows], fontsize=8)
    ax.set(xlabel="gain over the matched baseline, % (95% CI)", title=title)
    ax.grid(alpha=0.3, axis="x")
    return to_png(fig)


def pareto_plot(points: Sequence[tuple[float, float, bool, str]], *, xlabel: str = "student parameters",
                title: str = "accuracy vs student size") -> bytes | None:
    """Accuracy against the student's cost (its parameter count, or its latency); ``points`` are
    (cost, accuracy, on_front, label)."""
    if len({p for p, _, _, _ in points}) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    rest = [(p, a) for p, a, front, _ in points if not front]
    front = sorted((p, a, label) for p, a, on, label in points if on)
    if rest:
        ax.scatter([p for p, _ in rest], [100 * a for _, a in rest], c="0.6", s=18, label="dominated trials")
    ax.plot([p for p, _, _ in front], [100 * a for _, a, _ in front], "o-", c="C3", ms=5, label="Pareto front")
    labels: dict[tuple[int, float], list[str]] = {}
    for p, a, label in front:  # tied trials share one point: one label naming them all
        labels.setdefault((p, a), []).append(label)
    for (p, a), names in labels.items():
        ax.annotate(", ".join(names), (p, 100 * a), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel=xlabel, ylabel="final validation accuracy % (what selected it)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def optuna_figure(function: str, study, **kwargs) -> bytes | None:
    """``optuna.visualization.matplotlib.<function>`` of ``study`` as a PNG; None when it drew no data."""
    from optuna.visualization import matplotlib as ovm

    _pyplot()
    ax = getattr(ovm, function)(study, **kwargs)
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    if not fig.axes or not any(a.has_data() for a in fig.axes):
        _pyplot().close(fig)
        return None
    return to_png(fig)


def optuna_plots(study) -> tuple[dict[str, bytes], list[str]]:
    """Optuna's optimisation history, parameter importances and parallel coordinates (and its
    Pareto front for two objectives) as PNGs, plus one note per plot it could not draw (the
    figures are declared in ``figures.optuna_calls``)."""
    import sys

    from kdsweep.tracking.figures import draw_optuna

    return draw_optuna(sys.modules[__name__], study)
