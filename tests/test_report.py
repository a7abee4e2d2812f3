"""`kdsweep report`: mean +- std per row, spread notes, Pareto front, html plots, compare, register.

Two tiny studies run once through the real CLI on generated CIFAR-10 files (2 seeds each); the
report's numbers are checked against what MLflow holds.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from click.testing import CliRunner
from conftest import run_cli
from tiny_layouts import write_cifar10

from kdsweep.cli import main
from kdsweep.tracking.render import difference_note, render_markdown
from kdsweep.tracking.report import Report, Row, TrialPoint, mark_pareto, spread_note

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny CPU runs: a second OpenMP thread only adds spinning


def tiny_spec(path: Path, data: Path, name: str, **extra) -> Path:
    recipe = {"epochs": 2, "batch_size": 25, "lr": 0.05}
    spec = {"name": name, "seeds": [0, 1], "data": {"dataset": "cifar10", "root": str(data)},
            "teacher": {"arch": "cnn_teacher", "width": 0.25, "recipe": recipe},
            "student": {"arch": "cnn_student", "width": 0.25, "recipe": recipe},
            "search": {"kd": {"temperature": {"choices": [2.0, 8.0]}, "alpha": {"choices": [0.5, 0.9]}}},
            "sampler": "random", "pruner": "none", "device": "cpu", **extra}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("report")
    data = write_cifar10(work / "data", per_file=20, n_test=50)
    pareto = tiny_spec(work / "pareto.yaml", data, "pareto", n_trials=3, multi_objective=True,
                       search={"kd": {"temperature": {"choices": [2.0, 8.0]}, "alpha": {"choices": [0.5, 0.9]}},
                               "width": {"choices": [0.25, 0.5]}})
    ema = tiny_spec(work / "ema.yaml", data, "ema", n_trials=1,
                    student={"arch": "cnn_student", "width": 0.25,
                             "recipe": {"epochs": 2, "batch_size": 25, "lr": 0.05, "ema_decay": 0.5}})
    for spec in (pareto, ema):
        proc = run_cli("study", "run", str(spec), cwd=work, env=ONE_THREAD)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "plots logged to MLflow" in proc.stdout
    return work


def report(work: Path, *args: str):
    """`kdsweep report ARGS` in-process (the studies themselves ran as real processes)."""
    stores = ["--tracking-uri", f"sqlite:///{work}/mlruns/mlflow.db", "--storage", f"sqlite:///{work}/mlruns/optuna.db"]
    return CliRunner().invoke(main, ["report", *args, *stores])


def client(work: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")


def distilled_by_trial(work: Path, study: str) -> dict[str, list]:
    c = client(work)
    exp = c.get_experiment_by_name(study)
    runs = c.search_runs([exp.experiment_id], "tags.role = 'distilled' and attributes.status = 'FINISHED'")
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags["trial"], []).append(r)
    return out


def pct(xs: list[float]) -> str:
    return f"{statistics.fmean(xs) * 100:.2f} +- {statistics.stdev(xs) * 100:.2f}"


def table_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| Teacher") or line.startswith("| Student") or line.startswith("| Distilled"):
            rows[cells[0]] = cells
    return rows


def test_every_row_shows_mean_and_spread_over_seeds(work):
    proc = report(work, "pareto")
    assert proc.exit_code == 0, proc.output
    rows = table_rows(proc.stdout)
    trials = distilled_by_trial(work, "pareto")
    # the best trial is the best by validation (what the search selected on), not by test; a tie
    # goes to the earlier trial, as the confirmation's choice does
    best = min(trials.values(), key=lambda rs: (-statistics.fmean(r.data.metrics["final_val_acc"] for r in rs),
                                                int(rs[0].data.tags["trial"])))
    distilled = rows[f"Distilled student (trial {best[0].data.tags['trial']}, kd, best by validation; not confirmed)"]
    # the distilled row is the best trial's two seeds, as MLflow holds them
    assert distilled[5] == pct([r.data.metrics["final_test_acc"] for r in best])
    assert distilled[4] == pct([r.data.metrics["final_val_acc"] for r in best])
    assert distilled[3] == pct([r.data.metrics["final_train_acc"] for r in best])
    baseline = rows["Student (baseline)"]
    assert "+-" in baseline[3] and "+-" in baseline[4] and "+-" in baseline[5]
    # one pretrained teacher: a single value, no spread to show
    assert "+-" not in rows["Teacher"][5]
    # the gain is paired per seed, with its 95% interval; the verdict follows the interval
    deltas = [r.data.metrics["delta_vs_baseline"] for r in best]
    assert distilled[6].startswith(f"{100 * statistics.fmean(deltas):+.2f} +- ") and "[" in distilled[6]
    low, high = (float(x) for x in distilled[6].split("[")[1].rstrip("]").split(","))
    assert (distilled[9] == "not distinguishable from the baseline") == (low <= 0 <= high)


def test_pareto_front_is_listed_and_non_dominated(work):
    proc = report(work, "pareto")
    section = proc.stdout.split("## Pareto front: accuracy vs student parameters", 1)[1]
    front = {line.split("|")[1].strip() for line in section.splitlines() if re.match(r"\| \d+ \|", line)}
    trials = distilled_by_trial(work, "pareto")
    score = {t: (statistics.fmean(r.data.metrics["final_val_acc"] for r in rs), rs[0].data.metrics["num_params"])
             for t, rs in trials.items()}

    def dominated(t):
        a, p = score[t]
        return any(a2 >= a and p2 <= p and (a2 > a or p2 < p) for a2, p2 in score.values())

    assert front and front == {t for t in score if not dominated(t)}


def test_html_report_embeds_the_plots(work):
    out = work / "report.html"
    proc = report(work, "pareto", "--format", "html", "--out", str(out))
    assert proc.exit_code == 0, proc.output
    text = out.read_text()
    charts = set(re.findall(r"<figure class='chart' data-name='([a-z_]+)'>", text))
    assert {"accuracy_per_epoch", "accuracy_vs_params_kd", "loss_terms_best_trial", "pareto_front",
            "optuna_history", "optuna_parallel", "optuna_pareto"} <= charts
    # self-contained: plotly.js embedded once, nothing fetched from elsewhere
    assert text.count("plotly.js v") == 1
    assert "<script src=" not in text and "<link " not in text
    # one table of figures feeds both renderers: the gains' forest plot is a chart too, and a figure
    # with a chart is not repeated as a PNG
    pngs = set(re.findall(r"<img alt='([a-z_]+)'", text))
    assert not pngs & charts and "gains_forest" in charts
    # 3 trials are too few for importances: said, not drawn
    assert "optuna_importances" not in charts and "needs at least 4 finished trials" in text


def test_study_run_logged_report_and_plots_to_its_parent_run(work):
    c = client(work)
    exp = c.get_experiment_by_name("pareto")
    parent = c.search_runs([exp.experiment_id], "tags.role = 'study'")[0]
    files = {f.path for f in c.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/plots"} <= files
    plots = {f.path for f in c.list_artifacts(parent.info.run_id, "report/plots")}
    assert "report/plots/accuracy_per_epoch.png" in plots and "report/plots/optuna_history.png" in plots


def test_compare_puts_two_studies_side_by_side(work):
    proc = report(work, "--compare", "pareto", "ema")
    assert proc.exit_code == 0, proc.output
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| Model"))
    assert "pareto test acc %" in header and "ema test acc %" in header and "ema - pareto %" in header
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| Distilled student"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    means = []
    for study in ("pareto", "ema"):
        trials = distilled_by_trial(work, study)
        # each study's best trial by validation, and its test accuracy
        best = min(trials.values(), key=lambda rs: (-statistics.fmean(r.data.metrics["final_val_acc"] for r in rs),
                                                    int(rs[0].data.tags["trial"])))
        means.append(statistics.fmean(r.data.metrics["final_test_acc"] for r in best))
    assert cells[1].split(" +- ")[0] == f"{means[0] * 100:.2f}"
    assert cells[3] == f"{(means[1] - means[0]) * 100:+.2f}"
    # the EMA study's runs are in the EMA group, the other study's in the no-EMA group
    ema_row = next(line for line in proc.stdout.splitlines() if line.startswith("| EMA: distilled, EMA weights"))
    assert ema_row.split("|")[2].strip() == "-"


def chart_traces(page: str, name: str) -> list[dict]:
    """The plotly traces of chart ``name`` as the page hands them to ``Plotly.newPlot``."""
    start = page.index("[", page.index(f'"plot-{name}",'))
    return json.JSONDecoder().raw_decode(page, start)[0]


def mean_curve(c: MlflowClient, runs: list) -> list[float]:
    """Test accuracy % per epoch (of the EMA weights where a run kept them: what it is judged by),
    the mean over ``runs`` (their seeds)."""
    histories = []
    for r in runs:
        points = c.get_metric_history(r.info.run_id, "test_acc_ema") or c.get_metric_history(r.info.run_id, "test_acc")
        histories.append([m.value for m in sorted(points, key=lambda m: m.step)])
    return [100 * statistics.fmean(epoch) for epoch in zip(*histories)]


def test_compare_html_has_per_role_plots(work):
    out = work / "compare.html"
    proc = report(work, "--compare", "pareto", "ema", "--format", "html", "--out", str(out))
    assert proc.exit_code == 0, proc.output
    page = out.read_text()
    assert {"compare_teacher", "compare_baseline", "compare_distilled"} <= set(
        re.findall(r"<figure class='chart' data-name='([a-z_]+)'>", page))
    # each role's chart holds one curve per study, the mean over seeds of the runs its table row shows:
    # the one teacher (trained by the first study, reused by the second), each study's best trial
    # by validation, and the baseline of that trial's width
    c = client(work)
    experiments = {study: c.get_experiment_by_name(study).experiment_id for study in ("pareto", "ema")}
    (teacher,) = c.search_runs(list(experiments.values()), "tags.role = 'teacher'")
    for study, exp in experiments.items():
        best = min(distilled_by_trial(work, study).values(),
                   key=lambda rs: (-statistics.fmean(r.data.metrics["final_val_acc"] for r in rs),
                                   int(rs[0].data.tags["trial"])))
        width = best[0].data.params["width"]
        baseline = c.search_runs([exp], f"tags.role = 'baseline' and params.width = '{width}'")
        for role, runs in (("teacher", [teacher]), ("baseline", baseline), ("distilled", best)):
            (line,) = [t for t in chart_traces(page, f"compare_{role}") if t.get("name", "").startswith(f"{study} (")]
            assert line["x"] == [1, 2] and line["y"] == pytest.approx(mean_curve(c, runs)), (study, role)


@pytest.mark.parametrize("args", [("pareto", "ema"), ("--compare", "pareto"), ("nosuch",),
                                  ("--compare", "pareto", "ema", "--register", "x")])
def test_report_misuse_is_one_line_exit_2(work, args):
    proc = report(work, *args)
    assert proc.exit_code == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_register_best_student_in_the_model_registry(work):
    proc = report(work, "pareto", "--register", "kd-best")
    assert proc.exit_code == 0, proc.output
    assert "registered kd-best version 1" in proc.stderr
    c = client(work)
    version = c.get_model_version("kd-best", "1")
    run = c.get_run(version.run_id)
    assert run.data.tags["role"] == "distilled" and version.tags["study"] == "pareto"
    # the version is the run's own LoggedModel: loaded back with MLflow's loader, it scores what
    # the run logged on the raw uint8 test images (one image of slack for the memory layout)
    import mlflow.pyfunc

    from kdsweep.core.data import load_dataset

    logged = c.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert len(logged) == 1 and version.source == logged[0].artifact_location
    versions = json.loads(c.get_logged_model(logged[0].model_id).tags["mlflow.modelVersions"])
    assert {"name": "kd-best", "version": 1} in versions
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/kd-best/1")
    data = load_dataset("cifar10", work / "data")
    logits = model.predict(data.test_x.numpy())
    correct = int((logits.argmax(1) == data.test_y.numpy()).sum())
    assert correct / len(data.test_y) == pytest.approx(run.data.metrics["final_test_acc"], abs=1 / 50 + 1e-9)
    again = report(work, "pareto", "--register", "kd-best")  # the same name again: a new version
    assert "registered kd-best version 2" in again.stderr


# ---------------------------------------------------------------- the rules, on numbers given here


def test_spread_note_rule():
    assert spread_note([0.02, 0.03]) == ""  # mean 2.5 points, spread 0.7
    assert spread_note([0.05, -0.03]) == "change within the spread over seeds"
    assert spread_note([0.01]) == ""  # one seed: no spread to compare with


def test_difference_note_combines_both_spreads():
    assert difference_note([0.50, 0.52], [0.60, 0.62]) == ""
    assert difference_note([0.50, 0.56], [0.54, 0.58]) == "difference within the spread over seeds"
    assert difference_note([0.5], [0.6]) == "one seed: spread unknown"


def test_pareto_marks_only_undominated_trials():
    pts = [TrialPoint(str(i), {}, [acc], [0.0], size, []) for i, (acc, size) in
           enumerate([(0.6, 100), (0.7, 300), (0.5, 300), (0.6, 200), (0.7, 300)])]
    mark_pareto(pts)
    # trial 2 is worse and no smaller than 1; 3 as accurate as 0 but bigger; 1 and 4 tie (both kept)
    assert [p.on_front for p in pts] == [True, True, False, False, True]


def test_markdown_lists_pareto_only_when_sizes_differ():
    row = Row("Teacher", "a x1", 10, [0.9], [0.8])
    same = [TrialPoint("0", {"alpha": 0.5}, [0.5], [0.0], 100, [], True)]
    report = Report("s", [row, row, row], [("g", [])], same, "note", "run")
    assert "Pareto" not in render_markdown(report)
    report.trials = same + [TrialPoint("1", {"alpha": 0.9}, [0.6], [0.1], 200, [], True)]
    assert "## Pareto front" in render_markdown(report)


def test_ema_comparison_only_where_a_run_kept_ema_weights(work):
    with_ema, without = report(work, "ema"), report(work, "pareto")
    assert with_ema.exit_code == 0 and without.exit_code == 0, (with_ema.output, without.output)
    assert "## EMA vs no EMA (distilled runs)" in with_ema.stdout
    assert "| distilled, EMA weights | 2 |" in with_ema.stdout  # one trial, two seeds
    assert "EMA vs no EMA" not in without.stdout  # a table of zero runs says nothing
