"""After a study: its figures, the report and plots logged to MLflow, the best student registered.

The study layer never imports MLflow, so this runs from the CLI once ``run_study`` returns:
the report (markdown and html) and every plot go to the study's parent run under ``report/``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kdsweep.errors import TrackingError
from kdsweep.tracking import render
from kdsweep.tracking.figures import compare_figures as draw_compared, report_figures as draw_report
from kdsweep.tracking.report import Report, client_for, load_optuna_study, load_report


def report_figures(report: Report, optuna_study=None) -> tuple[dict[str, bytes], list[str]]:
    """Every figure of one study (the table in ``figures``, Optuna's too), as ``{name: png}``, and
    notes on those that could not be drawn."""
    return draw_report(report, "png", optuna_study)


def report_charts(report: Report, optuna_study=None) -> tuple[dict[str, object], list[str]]:
    """The same figures as interactive plotly charts, same names; the html shows these, and the PNG
    of a figure with no chart."""
    return draw_report(report, "plotly", optuna_study)


def compare_figures(reports: list[Report]) -> tuple[dict[str, bytes], list[str]]:
    return draw_compared(reports, "png")


def compare_charts(reports: list[Report]) -> dict[str, object]:
    return draw_compared(reports, "plotly")[0]


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
