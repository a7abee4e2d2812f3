"""The Python API for notebooks, beside the CLI: ``from kdsweep import run_study, load_report``.

``run_study`` goes the way ``kdsweep study run`` goes (:func:`execute`, which the CLI calls too):
the spec validated, the preflight (data, stores, models) before anything is created, the study
run or resumed with MLflow tracking, then the report and its plots logged to the study's parent
run. Bad input raises a :class:`kdsweep.errors.KdsweepError` (a ``SpecError`` lists every
problem, one line each), never ``SystemExit``. torch, Optuna and MLflow are imported on the first
call, not on ``import kdsweep``.

Example::

    from kdsweep import run_study, load_report

    summary = run_study("studies/quick.yaml", n_trials=4, device="cpu")
    print(summary.best_value, summary.best_params)
    df = load_report(summary.study_name, tracking_uri="sqlite:///mlruns/mlflow.db")
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from kdsweep.stores import DEFAULT_TRACKING_URI

# keyword overrides with a CLI flag of the same name (--data-root, --n-trials, ...); ``set`` takes the
# --set items ("student.recipe.epochs=2"); any other keyword replaces that top-level spec field
FLAG_OVERRIDES = ("data_root", "n_trials", "storage", "tracking_uri", "device", "jobs", "set")


def http_auth():
    """The login MLflow's client sends to a tracking server, from MLflow's own variables."""
    from kdsweep.study.probes import HttpAuth

    env = os.environ
    return HttpAuth(username=env.get("MLFLOW_TRACKING_USERNAME"), password=env.get("MLFLOW_TRACKING_PASSWORD"),
                    token=env.get("MLFLOW_TRACKING_TOKEN"), cert_path=env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"),
                    insecure_tls=env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("1", "true"))


def execute(spec, source: str, *, search: bool = True, problems=(), heartbeat: int | None = None,
            system_metrics: bool | None = None, progress: bool = True,
            on_recorder: Callable[[Any], None] | None = None, on_data: Callable[[Any], None] | None = None):
    """Preflight, then run (or resume) ``spec`` with MLflow tracking; the ``StudyOutcome``.

    The one path of ``kdsweep study run/confirm/worker`` and of :func:`run_study`. ``source`` names
    the spec in problems; ``problems`` are lines the caller found already (reported with the
    preflight's); ``progress`` draws rich progress bars; ``on_recorder`` is handed the MLflow
    recorder before the study starts (the CLI prints its runs URL); ``on_data`` the preflight's data
    (the CLI prints which loader it chose, and why).
    """
    from kdsweep.study.preflight import preflight
    from kdsweep.study.runner import run_study as run
    from kdsweep.tracking.logger import MlflowRecorder

    data = preflight(spec, source=str(source), http_auth=http_auth(), problems=problems)  # before any store exists
    if on_data is not None:
        on_data(data)
    recorder = MlflowRecorder(spec.tracking_uri, artifacts=spec.artifacts, system_metrics=system_metrics)
    if on_recorder is not None:
        on_recorder(recorder)
    extra = {} if heartbeat is None else {"heartbeat": heartbeat}
    if not progress:
        return run(spec, recorder=recorder, search=search, data=data, **extra)
    from kdsweep.progress import ProgressRecorder

    with ProgressRecorder(recorder, n_runs=spec.n_trials * len(spec.seeds)) as shown:
        return run(spec, recorder=shown, search=search, data=data,
                   on_open=lambda done: shown.already_done(done * len(spec.seeds)), **extra)


def load(spec: str | Path | Mapping[str, Any], overrides: Mapping[str, Any]):
    """The validated spec of a path or a mapping, with keyword overrides; (spec, its name in problems)."""
    from kdsweep.study.spec import load_spec, spec_from_raw

    flags = {k: v for k, v in overrides.items() if k in FLAG_OVERRIDES}
    fields = {k: v for k, v in overrides.items() if k not in FLAG_OVERRIDES}
    if "set" in flags and isinstance(flags["set"], str):
        flags["set"] = [flags["set"]]
    if isinstance(spec, Mapping):
        raw = {**dict(spec), **fields}
        return spec_from_raw(raw, "<spec dict>", flags), "<spec dict>"
    path = Path(spec)
    if fields:  # top-level fields beside the flags: applied as --set items are, under the flags
        import yaml

        flags["set"] = list(flags.get("set") or []) + [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                                      for k, v in fields.items()]
    return load_spec(path, flags), str(path)


def run_study(spec: str | Path | Mapping[str, Any], *, progress: bool = False, publish: bool = True,
              **overrides: Any):
    """Run or resume a study; returns its summary (``kdsweep.study.runner.StudyOutcome``).

    Args:
        spec: a spec file's path, or the spec itself as a mapping (what the YAML file would hold).
        progress: draw progress bars (off by default: notebooks print them badly).
        publish: log the report and its plots to the study's MLflow parent run, as the CLI does; a
            failure there only warns.
        **overrides: ``n_trials``, ``device``, ``storage``, ``tracking_uri``, ``data_root``, ``jobs`` as
            the CLI's flags; ``set=["student.recipe.epochs=2", ...]`` as ``--set``; any other keyword
            replaces that top-level field (``seeds=[0, 1]``, ``sampler="random"``).

    Raises:
        KdsweepError: a bad spec or input (every problem, one line each), a store that cannot be
            reached, or every trial failing. Nothing is created when the spec or preflight fails.
    """
    from kdsweep.errors import KdsweepError

    loaded, source = load(spec, overrides)
    outcome = execute(loaded, source, progress=progress)
    if publish:
        from kdsweep.tracking.publish import publish as log_report

        try:
            log_report(loaded.name, loaded.tracking_uri, loaded.storage)
        except KdsweepError as exc:
            warnings.warn(f"report not logged to MLflow ({exc}); load_report still works", stacklevel=2)
    return outcome


def load_report(name: str, tracking_uri: str = DEFAULT_TRACKING_URI, *, top: int = 5):
    """The report's rows (teacher, baseline, distilled) of study ``name`` as a pandas DataFrame.

    One row per report row: its label, arch, parameter count, mean and std over seeds of the train,
    validation and test accuracy (fractions, not percent), the mean change against its reference
    (the baseline's against the teacher, a distilled row's against its matched baselines) with the
    95% interval of a paired gain, the seeds and the note. ``df.attrs`` holds the headline, the
    epoch note, and the trials (one dict per trial, best by validation first).
    """
    import pandas as pd

    from kdsweep.tracking.report import load_report as read, mean, std

    report = read(name, tracking_uri, top=top)

    def stats(xs: list[float]) -> tuple[float | None, float | None]:
        return (mean(xs), std(xs)) if xs else (None, None)

    records = []
    for r in report.rows:
        (tr, tr_sd), (va, va_sd), (te, te_sd) = stats(r.train_acc), stats(r.val_acc), stats(r.test_acc)
        records.append({
            "label": r.label, "arch": r.arch, "method": r.method, "params": r.params,
            "train_acc": tr, "train_acc_std": tr_sd, "val_acc": va, "val_acc_std": va_sd,
            "test_acc": te, "test_acc_std": te_sd, "change": mean(r.delta) if r.delta else None,
            "gain_low": r.gain.low if r.gain is not None and r.gain.n > 1 else None,
            "gain_high": r.gain.high if r.gain is not None and r.gain.n > 1 else None,
            "seeds": len(r.test_acc), "final_epoch": r.epoch, "note": r.note})
    df = pd.DataFrame.from_records(records)
    df.attrs.update(study=report.study, headline=report.headline, epoch_note=report.epoch_note,
                    trials=[{"trial": t.trial, "arch": t.arch, "method": t.method, **t.params,
                             "num_params": t.num_params, "latency_ms": t.latency_ms,
                             "val_acc": mean(t.val_acc) if t.val_acc else None, "test_acc": mean(t.test_acc),
                             "on_front": t.on_front} for t in report.trials])
    return df
