"""Report figures as interactive plotly figures, for the html report (the PNGs stay in ``plots``).

Each function takes the same plain numbers as its twin in ``plots`` and returns a
``plotly.graph_objects.Figure``, or None when there is nothing to draw; hovering a point shows
its trial number and parameters. Optuna's own plots come from ``optuna.visualization`` (plotly
already). A figure with no twin here is shown in the html as its PNG.
"""

from __future__ import annotations

import statistics
import warnings
from typing import Sequence

from kdsweep.tracking.plots import MIN_TRIALS_FOR_IMPORTANCE, Curve

LAYOUT = {"template": "plotly_white", "height": 420, "margin": {"l": 60, "r": 20, "t": 50, "b": 50},
          "hoverlabel": {"align": "left"}}


def _go():
    import plotly.graph_objects as go

    return go


def _hover(params: dict[str, float]) -> str:
    return "<br>".join(f"{k} = {v:.4g}" for k, v in sorted(params.items()))


def epoch_curves(series: dict[str, list[Curve]], *, title: str, ylabel: str = "test accuracy %", scale: float = 100.0):
    """Per epoch (test accuracy by default): per label the mean over seeds, with a min..max band when several."""
    series = {k: [c for c in v if c] for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    go = _go()
    fig = go.Figure()
    for i, (label, curves) in enumerate(series.items()):
        color = f"hsl({(i * 137) % 360},65%,45%)"
        epochs = sorted({e for c in curves for e, _ in c})
        by_epoch = [[a for c in curves for e2, a in c if e2 == e] for e in epochs]
        name = f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
        if len(curves) > 1:
            band_x = epochs + epochs[::-1]
            band_y = [scale * max(v) for v in by_epoch] + [scale * min(v) for v in by_epoch][::-1]
            fig.add_trace(go.Scatter(x=band_x, y=band_y, fill="toself", fillcolor=color, opacity=0.15,
                                     line={"width": 0}, hoverinfo="skip", showlegend=False, legendgroup=label))
        fig.add_trace(go.Scatter(
            x=epochs, y=[scale * statistics.fmean(v) for v in by_epoch], mode="lines+markers", name=name,
            legendgroup=label, line={"color": color},
            customdata=[[scale * min(v), scale * max(v), len(v)] for v in by_epoch],
            hovertemplate=(f"{label}<br>epoch %{{x}}<br>{ylabel} %{{y:.4g}}<br>"
                           "min..max %{customdata[0]:.4g}..%{customdata[1]:.4g} over %{customdata[2]} runs"
                           "<extra></extra>")))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=ylabel, **LAYOUT)
    fig.update_xaxes(dtick=1 if max(len(c) for v in series.values() for c in v) < 15 else None)
    return fig


def param_scatter(points: Sequence[tuple[str, dict[str, float], list[float]]], names: Sequence[str]):
    """Final test accuracy of each trial (mean over seeds, bar = std) against each of ``names``;
    ``points`` are (trial, params, accuracy per seed)."""
    names = [n for n in names if any(n in p for _, p, _ in points)]
    if not points or not names:
        return None
    go = _go()
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True, subplot_titles=[f"accuracy vs {n}" for n in names])
    for col, name in enumerate(names, start=1):
        xs = [(trial, p, accs) for trial, p, accs in points if name in p and accs]
        fig.add_trace(go.Scatter(
            x=[p[name] for _, p, _ in xs], y=[100 * statistics.fmean(a) for _, _, a in xs], mode="markers",
            name=name, showlegend=False, marker={"size": 9},
            error_y={"type": "data", "array": [100 * statistics.stdev(a) if len(a) > 1 else 0 for _, _, a in xs]},
            text=[f"trial {t}<br>{_hover(p)}<br>seeds: {len(a)}" for t, p, a in xs],
            hovertemplate="%{text}<br>test acc %{y:.2f}%<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text=name, row=1, col=col)
    fig.update_yaxes(title_text="final test accuracy %", row=1, col=1)
    fig.update_layout(**LAYOUT)
    return fig


def pareto_plot(points: Sequence[tuple[float, float, bool, str]], *, xlabel: str = "student parameters",
                title: str = "accuracy vs student size"):
    """Accuracy against the student's cost (its parameter count, or its latency); ``points`` are
    (cost, accuracy, on_front, label)."""
    if len({p for p, _, _, _ in points}) < 2:
        return None
    go = _go()
    fig = go.Figure()
    rest = [(p, a, label) for p, a, front, label in points if not front]
    front = sorted((p, a, label) for p, a, on, label in points if on)
    hover = f"%{{text}}<br>{xlabel} %{{x:,.4g}}<br>val acc %{{y:.2f}}%<extra></extra>"
    if rest:
        fig.add_trace(go.Scatter(x=[p for p, _, _ in rest], y=[100 * a for _, a, _ in rest], mode="markers",
                                 name="dominated trials", marker={"color": "#999"},
                                 text=[label for _, _, label in rest], hovertemplate=hover))
    fig.add_trace(go.Scatter(x=[p for p, _, _ in front], y=[100 * a for _, a, _ in front], mode="lines+markers",
                             name="Pareto front", marker={"color": "#c0392b"},
                             text=[label for _, _, label in front], hovertemplate=hover))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title="final validation accuracy % (what selected it)",
                      **LAYOUT)
    return fig


def optuna_charts(study) -> tuple[dict[str, object], list[str]]:
    """Optuna's plotly plots, named as their PNGs in ``plots.optuna_plots`` (which gives the notes)."""
    import optuna
    from optuna import visualization as ov

    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None  # accuracy, the first objective
    kw = {"target": target, "target_name": "test accuracy"} if multi else {}
    makers = {
        "optuna_history": lambda: ov.plot_optimization_history(study, **kw),
        "optuna_importances": lambda: ov.plot_param_importances(study, **kw),
        "optuna_parallel": lambda: ov.plot_parallel_coordinate(study, **kw),
    }
    if multi:
        makers["optuna_pareto"] = lambda: ov.plot_pareto_front(study, target_names=["test accuracy", "parameters"])
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    if done < MIN_TRIALS_FOR_IMPORTANCE:
        del makers["optuna_importances"]
    figures, notes = {}, []
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning, and "too few trials"
                fig = make()
        except (ValueError, RuntimeError, optuna.exceptions.OptunaError) as exc:
            notes.append(f"{name}: skipped ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})")
            continue
        if any(len(getattr(t, "x", None) or getattr(t, "dimensions", None) or ()) for t in fig.data):
            fig.update_layout(height=LAYOUT["height"])
            figures[name] = fig
    return figures, notes
