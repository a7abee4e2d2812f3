"""MlflowRecorder: the study layer's Recorder, written with MlflowClient and explicit run ids.

Layout: one experiment per study; one parent run (``role=study``); child runs tagged
``role=teacher|baseline|distilled`` and ``config_hash`` (the reuse key). Explicit run ids, never
MLflow's global active run, so parallel trials and workers cannot log into each other's runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kdsweep.core.summary import RunSummary
from kdsweep.core.trainer import EpochMetrics
from kdsweep.errors import TrackingError
from kdsweep.interrupts import held
from kdsweep.stores import DEFAULT_ARTIFACTS, sqlite_file
from kdsweep.study.recorder import FinishedRun, RunInfo
# imported before any trial thread starts: the module installs a warning filter
from kdsweep.tracking.logged_models import dataset_inputs, final_metrics, log_final_model

MAX_PARAM = 6000  # MLflow's limit on a param value's length
# MLflow's own tag for a model-development experiment (not GenAI). MLflow 3.17's UI still opens a bare
# experiment URL on its GenAI overview while its global switch says GenAI: ``runs_url`` opens the runs
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
SYSTEM_METRICS_SECONDS = 5  # sampling interval of CPU, memory and GPU use (MLflow's default is 10)

# bounded retries: a lost server fails a trial in about a minute instead of hanging for long
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# a server that stops mid-study (restarted, redeployed): wait this long for /health before the study
# stops with its resume line; 0 stops at once
WAIT_ENV = "KDSWEEP_TRACKING_WAIT"
WAIT_SECONDS = 120
# calls that would make a second run if the lost request had reached the server: retried only when the
# connection was refused, i.e. the request never left this machine
NOT_IDEMPOTENT = ("create_run",)
REFUSED = ("Connection refused", "Failed to establish a new connection")
# reusing a teacher or baseline downloads its checkpoint: no tqdm bar in the middle of rich's bars
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def redact_passwords(text: str) -> str:
    """Hide the password of every ``scheme://user:password@host`` URL (storage URLs carry them)."""
    return re.sub(r"(://[^/:@\s\"']+):[^@\s\"']+@", r"\1:***@", text)


def quiet_mlflow_logs() -> None:
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking", "mlflow.store"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_reachable(uri: str, *, timeout: float = 10.0) -> None:
    """Fail fast, naming the URI, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            if r.status != 200:
                raise TrackingError(f"tracking_uri={uri!r}: server answered {r.status} on /health")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"tracking_uri={uri!r}: MLflow server not reachable ({reason})") from None


def local_artifact_root(tracking_uri: str, artifacts: str) -> str | None:
    """Artifact location for experiments in a local store; a server picks its own."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return Path(artifacts).resolve().as_uri()


def wait_seconds() -> float:
    """How long a call waits for a lost server to come back (``$KDSWEEP_TRACKING_WAIT``, default 120 s)."""
    raw = os.environ.get(WAIT_ENV, str(WAIT_SECONDS))
    try:
        value = float(raw)
    except ValueError:
        raise TrackingError(f"{WAIT_ENV}={raw[:50]!r}: not a number of seconds") from None
    return max(0.0, value)


def answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Guarded:
    """An MlflowClient whose failures become one-line TrackingErrors naming the URI.

    MLflow retries HTTP calls itself (bounded by the MLFLOW_HTTP_REQUEST_* variables above). When
    a call still fails and the server's ``/health`` does not answer either, the server is down
    (stopped, restarting): the call says so on stderr, waits up to ``wait`` seconds for ``/health``
    and runs again. Metric batches carry their own timestamps and steps, and MLflow drops a metric
    it already holds, so a call that reached the server before it went down is not logged twice.
    What still fails reaches the study as a TrackingError, which stops it with the resume line
    instead of failing every later trial the same way.
    """

    def __init__(self, client, uri: str, *, wait: float | None = None, announce=say) -> None:
        self._inner, self._uri = client, uri
        self._wait = wait_seconds() if wait is None else wait
        self._announce = announce

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            from mlflow.exceptions import MlflowException

            deadline = None
            while True:
                try:
                    with held():  # a Ctrl-C inside a store's write could leave its lock held
                        return attr(*args, **kwargs)
                except (MlflowException, OSError) as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    failed = f"tracking_uri={self._uri!r}: MLflow {name} failed: {first[:400]}"
                    if not self._server_down(name, str(exc)):
                        raise TrackingError(failed) from exc
                    if deadline is None:
                        deadline = time.monotonic() + self._wait
                        self._announce(f"MLflow server {self._uri} is not answering; waiting up to "
                                       f"{self._wait:.0f} s for it to come back (${WAIT_ENV})")
                    if not self._back_by(deadline):
                        raise TrackingError(f"{failed} (waited {self._wait:.0f} s for the server)") from exc
                    self._announce(f"MLflow server {self._uri} is back; going on")

        return call

    def _server_down(self, name: str, message: str) -> bool:
        """True when waiting may help: an HTTP server that does not answer /health now."""
        if self._wait <= 0 or not self._uri.startswith(("http://", "https://")) or answers(self._uri):
            return False
        return name not in NOT_IDEMPOTENT or any(r in message for r in REFUSED)

    def _back_by(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if answers(self._uri):
                return True
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        return answers(self._uri)


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def runs_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The MLflow UI's runs page of an experiment, when the store is a server; ``workflowType`` opens
    the UI's "Model training" side (Runs, Models, Model registry) instead of its GenAI one."""
    if not is_server(tracking_uri):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class MlflowRecorder:
    """Records runs with explicit ids. Per run: its params, one input per data split, metrics per
    epoch, the checkpoint artifact, and the final weights as a LoggedModel holding the final
    metrics; with ``system_metrics`` (default: on against a server) CPU, memory and GPU use too."""

    def __init__(self, tracking_uri: str, *, artifacts: str = DEFAULT_ARTIFACTS, workdir: Path = Path("mlruns"),
                 system_metrics: bool | None = None) -> None:
        quiet_mlflow_logs()
        check_reachable(tracking_uri)
        self.uri = tracking_uri
        self._client = None
        self.artifacts = artifacts
        self.workdir = workdir
        self.system_metrics = is_server(tracking_uri) if system_metrics is None else system_metrics
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.data: dict[str, Any] | None = None  # describe_data() of the study's data, from begin_study
        self._runs: dict[str, tuple[str, dict[str, Any]]] = {}  # run id -> (role, params), for finish()
        self._monitors: dict[str, Any] = {}  # run id -> its SystemMetricsMonitor

    @property
    def client(self):
        """Made on first use: a SQLite store is a file, and a study that fails before its first
        run (bad data, no device) must leave no file behind."""
        if self._client is None:
            db = sqlite_file(self.uri)
            if db is not None:
                db.parent.mkdir(parents=True, exist_ok=True)
            from mlflow.tracking import MlflowClient

            self._client = Guarded(MlflowClient(self.uri), self.uri)
        return self._client

    # -- study ---------------------------------------------------------------------------
    def experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            for key, value in EXPERIMENT_KIND.items():  # an experiment made before kdsweep set it
                if exp.tags.get(key) != value:
                    self.client.set_experiment_tag(exp.experiment_id, key, value)
            return exp.experiment_id
        root = local_artifact_root(self.uri, self.artifacts)
        location = f"{root}/{name}" if root else None
        return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)

    @property
    def runs_url(self) -> str | None:
        return runs_url(self.uri, self.experiment_id) if self.experiment_id else None

    def begin_study(self, study_name: str, params: dict[str, Any]) -> None:
        self.experiment_id = self.experiment(study_name)
        self.data = params.get("data")
        found = self.client.search_runs([self.experiment_id], "tags.role = 'study'", max_results=1)
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            self._tag_published(params.get("spec", {}))
            return
        run = self.client.create_run(self.experiment_id, run_name=study_name,
                                     tags={"role": "study", "study": study_name})
        self.parent_id = run.info.run_id
        self._log_inputs(self.parent_id)
        spec = params.get("spec", {})
        flat = {"n_trials": spec.get("n_trials"), "sampler": spec.get("sampler"), "pruner": spec.get("pruner"),
                "objective": spec.get("objective"), "seeds": spec.get("seeds"),
                "selection": spec.get("selection", "val"), "report_epoch": spec.get("report_epoch", "final"),
                "val_split": spec.get("data", {}).get("val_split"),
                "confirm_seeds": (spec.get("confirm") or {}).get("seeds"),
                "teacher_arch": spec.get("teacher", {}).get("arch"),
                "student_arch": spec.get("student", {}).get("arch"),
                "dataset": spec.get("data", {}).get("dataset"), "data_identity": params.get("data_identity"),
                "pareto_metric": spec.get("pareto_metric") if spec.get("multi_objective") else None}
        self._log_params(self.parent_id, flat)
        text = redact_passwords(json.dumps(params, indent=2, default=str))
        self.client.log_text(self.parent_id, text, "spec.json")
        self._tag_published(params.get("spec", {}))

    def _tag_published(self, spec: dict[str, Any]) -> None:
        # a tag, not a param: a resumed study may correct its spec's published numbers
        published = {k: v for k, v in (spec.get("published") or {}).items() if v is not None}
        if published:
            self.client.set_tag(self.parent_id, "published", json.dumps(published))

    def end_study(self, summary: dict[str, Any]) -> None:
        if self.parent_id is None:
            return
        metrics = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
        self._log_metrics(self.parent_id, metrics, step=0)
        self.client.set_terminated(self.parent_id, "FINISHED")

    # -- runs ------------------------------------------------------------------------------
    def _search_all(self, filter_string: str, max_results: int = 1):
        ids = [e.experiment_id for e in self.client.search_experiments()]
        if not ids:
            return []
        return self.client.search_runs(ids, filter_string, max_results=max_results,
                                       order_by=["attributes.start_time DESC"])

    def find(self, role: str, key: str) -> FinishedRun | None:
        runs = self._search_all(f"tags.role = '{role}' and tags.config_hash = '{key}' "
                                "and attributes.status = 'FINISHED'")
        if not runs:
            return None
        run = runs[0]
        return FinishedRun(run.info.run_id, RunSummary.from_metrics(dict(run.data.metrics)),
                           self._checkpoint(run.info.run_id))

    def _checkpoint(self, run_id: str) -> Path | None:
        local = self.workdir / "downloads" / run_id
        cached = sorted(local.glob("checkpoint/*.pt"))
        if cached:
            return cached[0]
        files = [f.path for f in self.client.list_artifacts(run_id, "checkpoint") if f.path.endswith(".pt")]
        if not files:
            return None
        local.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, files[0], str(local)))

    def start(self, info: RunInfo) -> str:
        if self.experiment_id is None:
            raise RuntimeError("begin_study() must come first")
        run_id = info.run_id or self._unfinished(info)
        if run_id is not None:
            # a retried trial reopens its run: params stay as logged; tags follow the new trial number
            self.client.update_run(run_id, status="RUNNING")
            self._log_tags(run_id, info.tags)
            self._opened(run_id, info)
            return run_id
        tags = {"role": info.role, "config_hash": info.key, **info.tags}
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
        name = f"{info.role}-t{info.tags['trial']}-s{info.tags.get('seed')}" if "trial" in info.tags \
            else f"{info.role}-{info.params.get('arch')}-x{info.params.get('width')}-s{info.params.get('seed')}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self._log_params(run.info.run_id, info.params)
        self._log_inputs(run.info.run_id)
        self._opened(run.info.run_id, info)
        return run.info.run_id

    def _opened(self, run_id: str, info: RunInfo) -> None:
        self._runs[run_id] = (info.role, dict(info.params))
        if self.system_metrics and run_id not in self._monitors:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
            except ImportError as exc:  # psutil missing: the runs go on without
                logging.getLogger(__name__).warning("system metrics off: %s", exc)
                self.system_metrics = False
                return

            # its own thread and client; resume_logging continues the steps of a reopened run
            monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_SECONDS, resume_logging=True,
                                           tracking_uri=self.uri)
            monitor.start()
            self._monitors[run_id] = monitor

    def _closed(self, run_id: str) -> None:
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            with held():
                monitor.finish()

    def _unfinished(self, info: RunInfo) -> str | None:
        """A teacher or baseline run of the same key that was interrupted: continue it."""
        if info.role == "distilled":
            return None
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.role = '{info.role}' and tags.config_hash = '{info.key}' and attributes.status != 'FINISHED'",
            max_results=1)
        return runs[0].info.run_id if runs else None

    def log_epoch(self, run_id: str, metrics: EpochMetrics) -> None:
        self._log_metrics(run_id, metrics.as_dict(), step=metrics.epoch)

    def backfill(self, run_id: str, history: list[EpochMetrics]) -> None:
        logged = {m.step for m in self.client.get_metric_history(run_id, "train_loss")}
        for metrics in history:
            if metrics.epoch not in logged:
                self.log_epoch(run_id, metrics)

    def finish(self, run_id: str, summary: RunSummary, checkpoint: Path | None) -> None:
        self._closed(run_id)
        role, params = self._runs.pop(run_id, (None, {}))
        summary = summary.as_metrics()  # the typed record, as the flat metrics MLflow holds
        if checkpoint is not None:
            self.client.log_artifact(run_id, str(checkpoint), artifact_path="checkpoint")
        if checkpoint is not None and role is not None and "arch" in params and self.data:
            name = self.client.get_run(run_id).info.run_name  # the model says what it is, as its run does
            log_final_model(self.client, experiment_id=self.experiment_id, run_id=run_id, name=name, role=role,
                            params=params, data=self.data, summary=summary, checkpoint=checkpoint)
        else:  # nothing to load as a model: the metrics alone, still tied to their data split
            metrics = final_metrics(summary, self.data, model_id=None, step=int(summary.get("final_epoch", 0)))
            if metrics:
                self.client.log_batch(run_id, metrics=metrics)
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, run_id: str, reason: str, *, killed: bool = False) -> None:
        self._closed(run_id)
        self._runs.pop(run_id, None)
        self.client.set_tag(run_id, "failure_reason", reason[:5000])
        self.client.set_terminated(run_id, "KILLED" if killed else "FAILED")

    # -- helpers ---------------------------------------------------------------------------
    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM]) for k, v in params.items() if v is not None]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def _log_inputs(self, run_id: str) -> None:
        """The study's data splits (train, validation where there is one, test) as the run's inputs."""
        inputs = dataset_inputs(self.data)
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    def _log_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _log_metrics(self, run_id: str, metrics: dict[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if items:
            self.client.log_batch(run_id, metrics=items)
