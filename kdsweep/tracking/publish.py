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


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def report_figures(report: Report, optuna_study=None) -> tuple[dict[str, bytes], list[str]]:
    """Every figure of one study, as ``{name: png}``, and notes on those that could not be drawn."""
    if not _have_matplotlib():
        return {}, [PLOTS_MISSING]
    from kdsweep.tracking import plots

    teacher, baseline, distilled = report.rows[:3]
    candidates = {
        "accuracy_per_epoch": plots.epoch_curves(
            {"teacher": teacher.curves, "baseline student": baseline.curves, distilled.label: distilled.curves},
            title=f"{report.study}: test accuracy per epoch"),
        "gains_forest": plots.forest_plot([(r.label, r.gain) for r in report.rows
                                           if r.gain is not None and r.gain.n > 1],
                                          title=f"{report.study}: gain over the matched baseline, 95% CI"),
        "loss_terms_best_trial": plots.epoch_curves(
            report.best_terms, title=f"{report.study}: loss terms of trial {report.trials[0].trial} "
                                     f"({report.trials[0].method}), per epoch", ylabel="loss term", scale=1.0),
        "pareto_front": plots.pareto_plot([(t.num_params, t.selected_by, t.on_front, f"trial {t.trial}")
                                           for t in report.trials]),
    }
    for method in report.methods:  # accuracy against each param the trials of a method varied
        trials = [t for t in report.trials if t.method == method]
        varied = sorted(k for k in {k for t in trials for k in t.params}
                        if (k.startswith(f"{method}.") or "." not in k) and len({t.params.get(k) for t in trials}) > 1)
        candidates[f"accuracy_vs_params_{method}"] = plots.param_scatter([(t.params, t.test_acc) for t in trials],
                                                                        varied)
    figures = {k: v for k, v in candidates.items() if v is not None}
    notes = []
    if optuna_study is not None:
        more, notes = plots.optuna_plots(optuna_study)
        figures.update(more)
    return figures, notes


def compare_figures(reports: list[Report]) -> tuple[dict[str, bytes], list[str]]:
    """Per role, each study's per-epoch test accuracy on one plot (the compared experiments)."""
    if not _have_matplotlib():
        return {}, [PLOTS_MISSING]
    from kdsweep.tracking import plots

    figures = {}
    for i, role in enumerate(("teacher", "baseline", "distilled")):
        png = plots.epoch_curves({r.study: r.rows[i].curves for r in reports},
                                 title=f"{role}: test accuracy per epoch")
        if png is not None:
            figures[f"compare_{role}"] = png
    return figures, []


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
    report, figures, notes = build(study, tracking_uri, storage, client=client)
    run_id = parent_run(client, study)
    with tempfile.TemporaryDirectory(prefix="kdsweep-report-") as tmp:
        folder = Path(tmp)
        (folder / "report.md").write_text(render.render_markdown(report))
        (folder / "report.html").write_text(render.render_html(report, figures, notes))
        (folder / "plots").mkdir()
        for name, png in figures.items():
            (folder / "plots" / f"{name}.png").write_bytes(png)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        client.log_artifacts(run_id, str(folder), artifact_path="report")
    return run_id, files


def _image_size(client, run) -> int:
    """The side of the images the study trained on, from the spec its parent run logged."""
    import json

    parent = run.data.tags.get("mlflow.parentRunId")
    data = {}
    if parent:
        with tempfile.TemporaryDirectory(prefix="kdsweep-spec-") as tmp:
            try:
                spec = json.loads(Path(client.download_artifacts(parent, "spec.json", tmp)).read_text())
                data = spec.get("spec", {}).get("data", {})
            except (OSError, ValueError):
                data = {}
    from kdsweep.core.datasets import DEFAULT_IMAGE_SIZE

    return int(data.get("image_size") or (DEFAULT_IMAGE_SIZE if data.get("dataset") == "imagefolder" else 32))


def register_best(report: Report, tracking_uri: str, name: str, *, client=None):
    """Register the best distilled student (best trial, best seed) as a new version of model ``name``.

    The weights are logged beside the run as an MLflow PyTorch model (``registered_model/``, a
    torch.export graph); inputs are float NCHW images of the study's size, normalised with the
    training split's per-channel mean and std.
    """
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from kdsweep.core.checkpoint import load_checkpoint
    from kdsweep.core.checkpoint import load_weights

    client = client or client_for(tracking_uri)
    run_id = report.best_run_id
    run = client.get_run(run_id)
    files = [f.path for f in client.list_artifacts(run_id, "checkpoint") if f.path.endswith(".pt")]
    if not files:
        raise TrackingError(f"run {run_id}: no checkpoint artifact to register")
    with tempfile.TemporaryDirectory(prefix="kdsweep-register-") as tmp:
        path = Path(client.download_artifacts(run_id, files[0], tmp))
        payload = load_checkpoint(path)
        model = load_weights(path, payload["arch"], payload["width"], payload["num_classes"]).eval()
        # MLflow's default format is torch.export's pt2 (a traced graph, no pickled code). It traces
        # with an example: two images (batch > 1 keeps the batch dynamic) of the study's size, which
        # stays fixed (a dynamic height and width trace ~15x slower, for sizes never trained on)
        size = _image_size(client, run)
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, payload["num_classes"]))]))
        example = np.zeros((2, 3, size, size), dtype=np.float32)
        local = Path(tmp) / "registered_model"
        # the graph needs torch alone; stating it skips MLflow's requirement inference (a subprocess
        # that loads the model again)
        torch_version = torch.__version__.split("+")[0]
        mlflow.pytorch.save_model(model, str(local), signature=signature, input_example=example,
                                  pip_requirements=[f"torch=={torch_version}"])
        client.log_artifacts(run_id, str(local), artifact_path="registered_model")
    try:
        client.create_registered_model(name, description="kdsweep distilled students")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise TrackingError(f"cannot create registered model {name!r}: {str(exc).splitlines()[0]}") from None
    acc = run.data.metrics["final_test_acc"]
    version = client.create_model_version(
        name, source=f"{run.info.artifact_uri}/registered_model", run_id=run_id,
        tags={"study": report.study, "trial": run.data.tags.get("trial", ""), "seed": run.data.tags.get("seed", ""),
              "final_test_acc": f"{acc:.4f}"},
        description=(f"{payload['arch']} x{payload['width']} distilled in study {report.study}, trial "
                     f"{run.data.tags.get('trial')}, final test accuracy {acc:.4f}; inputs: float NCHW images "
                     "normalised with the training split's per-channel mean and std"))
    return version, acc
