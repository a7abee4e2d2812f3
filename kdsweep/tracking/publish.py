"""After a study: its figures, the report and plots logged to MLflow, the best student registered.

The study layer never imports MLflow, so this runs from the CLI once ``run_study`` returns:
the report (markdown and html) and every plot go to the study's parent run under ``report/``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kdsweep.errors import TrackingError
from kdsweep.tracking import render
from kdsweep.tracking.report import Report, client_for, load_optuna_study, load_report

PLOTS_MISSING = "plots need matplotlib: pip install 'kdsweep[plots]'"
CHARTS_MISSING = "interactive plots need plotly: pip install 'kdsweep[plots]'"


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _have_plotly() -> bool:
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    return True


def varied_params(report: Report) -> list[tuple[str, list, list[str]]]:
    """Per method: its trials, and the params (its own and the recipe's) those trials varied."""
    out = []
    for method in report.methods:
        trials = [t for t in report.trials if t.method == method]
        varied = sorted(k for k in {k for t in trials for k in t.params}
                        if (k.startswith(f"{method}.") or "." not in k) and len({t.params.get(k) for t in trials}) > 1)
        out.append((method, trials, varied))
    return out


PARETO_AXES = {"params": {"xlabel": "student parameters", "title": "accuracy vs student size"},
               "latency_ms": {"xlabel": "latency, ms per image at batch 1", "title": "accuracy vs student latency"}}


def figure_calls(report: Report) -> dict[str, tuple[str, tuple, dict]]:
    """The report's figures, declared once: name -> (drawing function, args, kwargs). ``plots``
    (PNG) and ``charts`` (plotly) both have functions of these names taking the same numbers."""
    teacher, baseline, distilled = report.rows[:3]
    calls = {
        "accuracy_per_epoch": ("epoch_curves", (
            {"teacher": teacher.curves, "baseline student": baseline.curves, distilled.label: distilled.curves},),
            {"title": f"{report.study}: test accuracy per epoch"}),
        "gains_forest": ("forest_plot", ([(r.label, r.gain) for r in report.rows if r.gain is not None and r.gain.n > 1],),
                         {"title": f"{report.study}: gain over the matched baseline, 95% CI"}),
        "pareto_front": ("pareto_plot", ([(t.cost(report.pareto_by), t.selected_by, t.on_front,
                                           f"trial {t.trial}" + (f" ({t.arch})" if len(report.archs) > 1 else ""))
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


def _draw(report: Report, backend, optuna_study, optuna_figures) -> tuple[dict, list[str]]:
    """Every figure ``backend`` can draw; a figure it has no function for is left to the other."""
    figures = {}
    for name, (function, args, kwargs) in figure_calls(report).items():
        draw = getattr(backend, function, None)
        figure = draw(*args, **kwargs) if draw is not None else None
        if figure is not None:
            figures[name] = figure
    notes = []
    if optuna_study is not None:
        more, notes = optuna_figures(optuna_study)
        figures.update(more)
    return figures, notes


def report_figures(report: Report, optuna_study=None) -> tuple[dict[str, bytes], list[str]]:
    """Every figure of one study, as ``{name: png}``, and notes on those that could not be drawn."""
    if not _have_matplotlib():
        return {}, [PLOTS_MISSING]
    from kdsweep.tracking import plots

    return _draw(report, plots, optuna_study, plots.optuna_plots)


def report_charts(report: Report, optuna_study=None) -> tuple[dict[str, object], list[str]]:
    """The interactive twins of ``report_figures`` (plotly), same names; the html shows these, and
    the PNG of a figure with no twin."""
    if not _have_plotly():
        return {}, [CHARTS_MISSING]
    from kdsweep.tracking import charts

    return _draw(report, charts, optuna_study, charts.optuna_charts)


def _compare(reports: list[Report], backend) -> dict:
    """Per role, each study's per-epoch test accuracy on one figure (the compared experiments)."""
    out = {}
    for i, role in enumerate(("teacher", "baseline", "distilled")):
        figure = backend.epoch_curves({r.study: r.rows[i].curves for r in reports},
                                      title=f"{role}: test accuracy per epoch")
        if figure is not None:
            out[f"compare_{role}"] = figure
    return out


def compare_figures(reports: list[Report]) -> tuple[dict[str, bytes], list[str]]:
    if not _have_matplotlib():
        return {}, [PLOTS_MISSING]
    from kdsweep.tracking import plots

    return _compare(reports, plots), []


def compare_charts(reports: list[Report]) -> dict[str, object]:
    if not _have_plotly():
        return {}
    from kdsweep.tracking import charts

    return _compare(reports, charts)


def build_html(study: str, tracking_uri: str, storage: str | None, *, client=None):
    """(report, PNG figures, html page) of one study: the page shows the plotly charts, and the PNG
    of any figure without one."""
    report = load_report(study, tracking_uri, client=client)
    optuna_study, why = load_optuna_study(study, storage)
    figures, notes = report_figures(report, optuna_study)
    charts, chart_notes = report_charts(report, optuna_study)
    notes = ([f"Optuna plots skipped: {why}"] if why else []) + notes
    notes += [n for n in chart_notes if n not in notes and n.split(":")[0] not in figures]
    return report, figures, render.render_html(report, figures, notes, charts=charts)


def build(study: str, tracking_uri: str, storage: str | None, *, client=None):
    """(report, figures, notes) of one study; Optuna plots when its storage can be opened."""
    report = load_report(study, tracking_uri, client=client)
    optuna_study, why = load_optuna_study(study, storage)
    figures, notes = report_figures(report, optuna_study)
    return report, figures, ([f"Optuna plots skipped: {why}"] if why else []) + notes


def parent_run(client, study: str) -> str:
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], "tags.role = 'study'", max_results=1) if exp else []
    if not runs:
        raise TrackingError(f"study {study!r}: no parent run (tags.role = 'study') to log the report into")
    return runs[0].info.run_id


def publish(study: str, tracking_uri: str, storage: str | None) -> tuple[str, list[str]]:
    """Log report.md, report.html and plots/*.png to the study's parent run; (run id, files)."""
    client = client_for(tracking_uri)
    report, figures, page = build_html(study, tracking_uri, storage, client=client)
    run_id = parent_run(client, study)
    with tempfile.TemporaryDirectory(prefix="kdsweep-report-") as tmp:
        folder = Path(tmp)
        (folder / "report.md").write_text(render.render_markdown(report))
        (folder / "report.html").write_text(page)
        (folder / "plots").mkdir()
        for name, png in figures.items():
            (folder / "plots" / f"{name}.png").write_bytes(png)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        client.log_artifacts(run_id, str(folder), artifact_path="report")
    return run_id, files


def register_best(report: Report, tracking_uri: str, name: str, *, client=None):
    """Register the best distilled student (best trial, best seed) as a new version of model ``name``.

    The version is the run's LoggedModel (``models:/<model_id>``, logged when the run finished):
    a pyfunc taking uint8 NCHW images of the study's size and returning logits.
    """
    from mlflow.exceptions import MlflowException

    from kdsweep.tracking.logged_models import model_of_run

    client = client or client_for(tracking_uri)
    run_id = report.best_run_id
    run = client.get_run(run_id)
    model = model_of_run(client, run.info.experiment_id, run_id)
    if model is None:
        raise TrackingError(f"run {run_id}: no logged model to register (a run from before kdsweep logged "
                            "models; rerun its trial in a new study)")
    try:
        client.create_registered_model(name, description="kdsweep distilled students")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise TrackingError(f"cannot create registered model {name!r}: {str(exc).splitlines()[0]}") from None
    acc = run.data.metrics["final_test_acc"]
    params = run.data.params
    version = client.create_model_version(
        name, source=model.artifact_location, run_id=run_id, model_id=model.model_id,
        tags={"study": report.study, "trial": run.data.tags.get("trial", ""), "seed": run.data.tags.get("seed", ""),
              "final_test_acc": f"{acc:.4f}"},
        description=(f"{params.get('arch')} x{params.get('width')} distilled in study {report.study}, trial "
                     f"{run.data.tags.get('trial')}, final test accuracy {acc:.4f}; inputs: uint8 NCHW images "
                     "as the data set stores them (the model normalises them); outputs: logits"))
    # as mlflow.register_model does: the LoggedModel lists its versions (the UI links them)
    import json

    listed = json.loads(client.get_logged_model(model.model_id).tags.get("mlflow.modelVersions", "[]"))
    client.set_logged_model_tags(model.model_id, {"mlflow.modelVersions": json.dumps(
        listed + [{"name": version.name, "version": version.version}])})
    return version, acc
