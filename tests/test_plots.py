"""Report figures (kdsweep.tracking.plots): real PNGs from real numbers, skips with reasons."""

from __future__ import annotations

import io

import optuna
import pytest

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from kdsweep.tracking import plots  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image(png: bytes) -> Image.Image:
    assert png.startswith(PNG_MAGIC)
    img = Image.open(io.BytesIO(png))
    img.load()
    return img


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the module renders, kept for a look at their data (still rendered for real)."""
    figures = []
    real = plots.to_png

    def keep(fig):
        figures.append(fig)
        return real(fig)

    monkeypatch.setattr(plots, "to_png", keep)
    return figures


def test_epoch_curves_draws_one_line_per_role(drawn):
    png = plots.epoch_curves({"teacher": [[(1, 0.5), (2, 0.7)]],
                              "student": [[(1, 0.3), (2, 0.4)], [(1, 0.35), (2, 0.45)]]}, title="t")
    img = image(png)
    assert img.width > 300 and img.height > 200
    (ax,) = drawn[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"teacher (1 seed)", "student (2 seeds)"}
    assert list(lines["teacher (1 seed)"].get_xdata()) == [1, 2]
    assert list(lines["teacher (1 seed)"].get_ydata()) == pytest.approx([50, 70])
    assert list(lines["student (2 seeds)"].get_ydata()) == pytest.approx([32.5, 42.5])  # the mean of its seeds
    # one min..max band, the student's: 30..35 % at epoch 1, 40..45 % at epoch 2
    (band,) = ax.collections
    corners = {(round(x, 6), round(y, 6)) for x, y in band.get_paths()[0].vertices}
    assert corners == {(1, 30), (2, 40), (2, 45), (1, 35)}


def test_epoch_curves_with_nothing_to_draw_is_none():
    assert plots.epoch_curves({"teacher": [], "student": [[]]}, title="t") is None


def test_param_scatter_skips_parameters_no_trial_has():
    names = ["kd.temperature", "kd.alpha"]
    assert plots.param_scatter([("0", {"lr": 0.1}, [0.5])], names) is None
    png = plots.param_scatter([("0", {"kd.temperature": 2.0, "kd.alpha": 0.5}, [0.5, 0.6]),
                               ("1", {"kd.temperature": 8.0, "kd.alpha": 0.9}, [0.7])], names)
    # two panels side by side are wider than tall
    img = image(png)
    assert img.width > img.height


def test_pareto_plot_needs_two_sizes(drawn):
    assert plots.pareto_plot([(100, 0.5, True, "a"), (100, 0.6, True, "b")]) is None
    assert drawn == []
    image(plots.pareto_plot([(300, 0.7, True, "b"), (100, 0.5, True, "a"), (300, 0.6, False, "c")]))
    (ax,) = drawn[0].axes
    # the front joins its trials by size; the dominated one is a separate grey point
    (front,) = ax.get_lines()
    assert front.get_label() == "Pareto front"
    assert list(front.get_xdata()) == [100, 300] and list(front.get_ydata()) == pytest.approx([50, 70])
    (rest,) = ax.collections
    assert rest.get_label() == "dominated trials" and rest.get_offsets().tolist() == [[300, 60]]
    assert sorted(t.get_text() for t in ax.texts) == ["a", "b"]


def _study(n: int, directions=("maximize",)) -> optuna.Study:
    study = optuna.create_study(directions=list(directions), sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        t = trial.suggest_float("temperature", 1.0, 8.0)
        a = trial.suggest_float("alpha", 0.1, 0.9)
        w = trial.suggest_categorical("width", [0.5, 1.0])
        acc = 0.5 + 0.03 * t - 0.1 * (a - 0.5) ** 2 + 0.1 * w
        study.tell(trial, (acc, w * 1000) if len(directions) > 1 else acc)
    return study


def test_optuna_plots_for_a_single_objective_study():
    figures, notes = plots.optuna_plots(_study(8))
    assert set(figures) == {"optuna_history", "optuna_importances", "optuna_parallel"}
    for png in figures.values():
        image(png)
    assert notes == []


def test_optuna_importances_need_enough_trials():
    figures, notes = plots.optuna_plots(_study(2))
    assert "optuna_importances" not in figures and "optuna_history" in figures
    assert any("optuna_importances" in n and "(has 2)" in n for n in notes)


def test_optuna_plots_for_two_objectives_include_the_pareto_front():
    figures, _ = plots.optuna_plots(_study(8, directions=("maximize", "minimize")))
    assert {"optuna_history", "optuna_pareto", "optuna_parallel"} <= set(figures)


def test_optuna_plots_of_an_empty_study_say_why():
    figures, notes = plots.optuna_plots(_study(0))
    assert figures == {}
    assert len(notes) == 3  # history, parallel coordinates: nothing to draw; importances: too few trials
