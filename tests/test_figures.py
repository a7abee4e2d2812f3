"""figures: the report's figures declared once, drawn by both renderers (PNG and plotly)."""

from __future__ import annotations

import optuna
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("plotly")

from kdsweep.tracking import figures  # noqa: E402
from kdsweep.tracking.report import Report, Row, TrialPoint, mark_pareto  # noqa: E402
from kdsweep.tracking.stats import paired_gain  # noqa: E402


def row(label: str, accs: list[float], gain=None) -> Row:
    return Row(label=label, arch="resnet8 x1.0", params=78042, train_acc=accs, test_acc=accs, gain=gain,
               curves=[[(1, a - 0.1), (2, a)] for a in accs], val_acc=accs, method="kd")


def make_report(pareto_by: str) -> Report:
    trials = [TrialPoint(trial=str(i), params={"lr": 0.01 * (i + 1), "kd.alpha": 0.5 + 0.1 * i}, test_acc=[0.5 + 0.05 * i],
                         delta=[0.01 * i], num_params=1000 * (i + 1), run_ids=[f"r{i}"], val_acc=[0.5 + 0.05 * i],
                         arch=["resnet8", "resnet14"][i % 2], latency_ms=1.0 + i, throughput_ips=100.0 / (i + 1))
              for i in range(4)]
    mark_pareto(trials, pareto_by)
    rows = [row("Teacher", [0.8]), row("Student (baseline)", [0.5, 0.52]),
            row("Distilled", [0.6, 0.63], gain=paired_gain([0.6, 0.63], [0.5, 0.52]))]
    return Report(study="s", rows=rows, ema=[], trials=trials, epoch_note="", best_run_id="r3",
                  best_terms={"kd": [[(1, 0.3), (2, 0.2)]]}, pareto_by=pareto_by)


def study_of(n: int) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        t = study.ask()
        study.tell(t, (t.suggest_float("lr", 0.01, 0.1), t.suggest_categorical("arch", ["a", "b"]) == "a"))
    return study


def test_both_renderers_draw_every_figure_of_the_one_table():
    report = make_report("params")
    png, png_notes = figures.report_figures(report, "png", study_of(6))
    charts, chart_notes = figures.report_figures(report, "plotly", study_of(6))
    declared = set(figures.figure_calls(report))
    assert declared <= set(png) and set(png) == set(charts)
    assert {"optuna_history", "optuna_pareto", "optuna_parallel", "optuna_importances"} <= set(png)
    assert png_notes == chart_notes == []


def test_a_latency_front_is_drawn_against_latency():
    report = make_report("latency_ms")
    name, args, kwargs = figures.figure_calls(report)["pareto_front"]
    # the cost of each point is the trial's latency, and the labels name the arch when archs differ
    assert sorted(p[0] for p in args[0]) == [1.0, 2.0, 3.0, 4.0]
    assert all("(resnet" in p[3] for p in args[0])
    charts, _ = figures.report_figures(report, "plotly")
    assert charts["pareto_front"].layout.xaxis.title.text == "latency, ms per image at batch 1"


def test_a_missing_library_is_a_note_not_an_error(monkeypatch):
    monkeypatch.setitem(figures.RENDERERS, "plotly", figures.Renderer("kdsweep.tracking.charts", "no_such_lib_xyz",
                                                                      "install it"))
    assert figures.report_figures(make_report("params"), "plotly") == ({}, ["install it"])
