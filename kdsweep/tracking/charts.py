"""Report figures as interactive plotly figures, for the html report (the PNGs stay in ``plots``).

Each function takes the same plain numbers as its twin in ``plots`` and returns a
``plotly.graph_objects.Figure``, or None when there is nothing to draw; hovering a point shows
its trial number and parameters. Optuna's own plots come from ``optuna.visualization`` (plotly
already). A figure with no twin here is shown in the html as its PNG.
"""

from __future__ import annotations

import statistics
from typing import Sequence

from kdsweep.tracking.plots import Curve

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


def forest_plot(rows: Sequence[tuple[str, object]], *, title: str):
    """Each row's paired gain (points) with its 95% interval (bars); the dashed line is no gain."""
    rows = [(label, g) for label, g in rows if g is not None]
    if not rows:
        return None
    go = _go()
    fig = go.Figure(go.Scatter(
        x=[100 * g.mean for _, g in rows], y=[label for label, _ in rows], mode="markers",
        marker={"size": 9, "color": ["#1f77b4" if g.distinguishable else "#999" for _, g in rows]},
        error_x={"type": "data", "symmetric": False, "array": [100 * (g.high - g.mean) for _, g in rows],
                 "arrayminus": [100 * (g.mean - g.low) for _, g in rows]},
        customdata=[[100 * g.low, 100 * g.high, g.n] for _, g in rows],
        hovertemplate="%{y}<br>gain %{x:+.2f}% [%{customdata[0]:+.2f}, %{customdata[1]:+.2f}] over "
                      "%{customdata[2]} seeds<extra></extra>"))
    fig.add_vline(x=0, line_dash="dash", line_color="black")
    fig.update_layout(title=title, xaxis_title="gain over the matched baseline, % (95% CI)",
                      **{**LAYOUT, "height": 120 + 50 * len(rows)})
    fig.update_yaxes(autorange="reversed")
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


def optuna_figure(function: str, study, **kwargs):
    """``optuna.visualization.<function>`` of ``study`` (plotly already); None when it drew no data."""
    from optuna import visualization as ov

    fig = getattr(ov, function)(study, **kwargs)
    if not any(len(getattr(t, "x", None) or getattr(t, "dimensions", None) or ()) for t in fig.data):
        return None
    fig.update_layout(height=LAYOUT["height"])
    return fig

