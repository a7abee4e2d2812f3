"""Trials that fail, and a tracking server that is gone: recorded with the reason, the study goes
on or stops cleanly, nothing hangs. Real Optuna and MLflow stores; failures injected by a tiny
registered model (``probe``) whose behaviour depends on its width."""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState
from torch import nn

from conftest import free_port, run_cli, write_spec
from kdsweep.cli import main
from kdsweep.core.config import TrainConfig
from kdsweep.core.models import MODELS
from kdsweep.errors import TrackingError
from kdsweep.study.recorder import RunInfo
from kdsweep.study.runner import run_study
from kdsweep.study.spec import load_spec
from kdsweep.tracking.logger import MlflowRecorder, check_reachable

BEHAVIOUR = {1.0: "learns", 2.0: "nan", 3.0: "oom", 4.0: "bug"}


class Probe(nn.Module):
    """Pool + linear: trains in milliseconds. Widths 2-4 fail the way real models do."""

    def __init__(self, num_classes: int, behaviour: str) -> None:
        super().__init__()
        self.fc, self.behaviour = nn.Linear(3, num_classes), behaviour

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.behaviour == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if self.behaviour == "bug":
            raise ValueError("probe: mat1 and mat2 shapes cannot be multiplied")
        out = self.fc(x.mean((2, 3)))
        return out * float("nan") if self.behaviour == "nan" else out


@pytest.fixture(autouse=True)
def probe_model(monkeypatch):
    """``probe`` in the model registry for this module's tests only (others iterate over MODELS)."""
    monkeypatch.setitem(MODELS._items, "probe",
                        lambda num_classes, width=1.0, in_channels=3: Probe(num_classes, BEHAVIOUR[width]))


def probe_spec(folder: Path, subset_root: Path, **overrides) -> Path:
    recipe = {"epochs": 1, "batch_size": 50, "lr": 0.05, "augment": False}
    spec = {"name": "failures", "data": {"dataset": "cifar10", "root": str(subset_root), "limit_per_file": 20},
            "teacher": {"arch": "probe", "width": 1.0, "recipe": recipe},
            "student": {"arch": "probe", "width": 1.0, "recipe": recipe},
            "search": {"width": {"choices": [1.0, 2.0, 3.0, 4.0]}}, "sampler": "grid", "pruner": "none",
            "n_trials": 4, **overrides}
    return write_spec(folder / "spec.yaml", subset_root, **spec)


def runs_of(tracking_uri: str, study: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_failing_trials_are_recorded_with_their_reason_and_the_study_goes_on(tmp_path, subset_root, monkeypatch,
                                                                             caplog):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(probe_spec(tmp_path, subset_root, sampler="random"))
    # one trial per behaviour, in order (a grid sampler would revisit the points of failed trials)
    (tmp_path / "mlruns").mkdir()
    study = optuna.create_study(study_name="failures", storage=spec.storage, direction="maximize")
    for width in BEHAVIOUR:
        study.enqueue_trial({"width": width})
    with caplog.at_level(logging.WARNING, logger="optuna"):
        outcome = run_study(spec, recorder=MlflowRecorder(spec.tracking_uri))
    assert (outcome.complete, outcome.failed) == (1, 3)  # every trial ran: the failures did not stop it

    trials = {t.params["width"]: t for t in optuna.load_study(study_name="failures", storage=spec.storage).trials}
    assert trials[1.0].state == TrialState.COMPLETE
    reasons = {w: trials[w].user_attrs["fail_reason"] for w in (2.0, 3.0, 4.0)}
    assert all(trials[w].state == TrialState.FAIL for w in reasons)
    assert reasons[2.0].startswith("DivergedError: training loss became nan")
    assert reasons[3.0].startswith("out of memory: CUDA out of memory")
    assert reasons[4.0] == "ValueError: probe: mat1 and mat2 shapes cannot be multiplied"

    # MLflow: each failed run is FAILED (none left RUNNING) and carries the same reason
    failed = {r.data.params["width"]: r for r in runs_of(spec.tracking_uri, "failures") if r.info.status == "FAILED"}
    assert sorted(failed) == ["2.0", "3.0", "4.0"]
    assert failed["2.0"].data.tags["failure_reason"].startswith("DivergedError")
    assert "CUDA out of memory" in failed["3.0"].data.tags["failure_reason"]
    assert "RUNNING" not in {r.info.status for r in runs_of(spec.tracking_uri, "failures")}

    # the log keeps a traceback for the bug in the model, not for the failures kdsweep expects
    logged = {r.getMessage().split(" failed with parameters: ")[1].split("}")[0]: r.exc_info is not None
              for r in caplog.records if " failed with parameters: " in r.getMessage()}
    assert logged == {"{'width': 2.0": False, "{'width': 3.0": False, "{'width': 4.0": True}


def test_a_study_where_every_trial_fails_says_so_and_exits_non_zero(tmp_path, subset_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = probe_spec(tmp_path, subset_root, search={"width": {"choices": [4.0]}}, n_trials=2)
    result = CliRunner().invoke(main, ["study", "run", str(spec)])
    assert result.exit_code == 2
    assert "every trial failed (2)" in result.stderr
    assert "ValueError: probe: mat1 and mat2 shapes cannot be multiplied" in result.stderr


# -- tracking server unreachable at start -----------------------------------------------------

def test_closed_port_fails_fast_naming_the_uri_before_anything_is_created(tmp_path, subset_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = probe_spec(tmp_path, subset_root)
    started = time.monotonic()
    result = CliRunner().invoke(main, ["study", "run", str(spec), "--tracking-uri", uri])
    assert time.monotonic() - started < 15
    assert result.exit_code == 2
    assert f"tracking_uri='{uri}': MLflow server not reachable" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # no Optuna study, no training


def test_server_that_never_answers_fails_within_15_seconds(tmp_path):
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(TrackingError, match=f"tracking_uri='{uri}': MLflow server not reachable"):
            check_reachable(uri)
        assert time.monotonic() - started < 15


def test_unreachable_server_as_a_real_process(tmp_path, subset_root):
    write_spec(tmp_path / "spec.yaml", subset_root)
    uri = f"http://127.0.0.1:{free_port()}"
    done = run_cli("study", "run", "spec.yaml", "--tracking-uri", uri, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"Error: spec.yaml: tracking_uri='{uri}': MLflow server not reachable" in done.stderr
    assert not (tmp_path / "mlruns").exists()


# -- tracking server lost mid-study -----------------------------------------------------------

class StopsServer:
    """The real MLflow recorder; stops the real server as the first distilled epoch is logged."""

    def __init__(self, inner: MlflowRecorder, server) -> None:
        self.inner, self.server, self.roles = inner, server, {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def start(self, info: RunInfo) -> str:
        run_id = self.inner.start(info)
        self.roles[run_id] = info.role
        return run_id

    def log_epoch(self, run_id, metrics) -> None:
        if self.roles[run_id] == "distilled":
            self.server.stop()
        self.inner.log_epoch(run_id, metrics)


def test_server_lost_mid_trial_fails_the_trial_with_the_reason_and_stops_the_study(tmp_path, subset_root,
                                                                                 monkeypatch):
    from kdsweep.tracking.server import ServerOptions, launch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDSWEEP_TRACKING_WAIT", "3")  # gone for good: a short wait, then the study stops
    opts = ServerOptions(port=free_port(), backend_store_uri=f"sqlite:///{tmp_path}/server/mlflow.db",
                         artifacts_destination=str(tmp_path / "server" / "artifacts"), workers=1,
                         log_file=tmp_path / "server" / "server.log")
    server = launch(opts, wait=300)
    try:
        spec = load_spec(probe_spec(tmp_path, subset_root, tracking_uri=server.url, n_trials=2,
                                    search={"width": {"choices": [1.0]}}))
        started = time.monotonic()
        # the shipped retry settings (logger.py): bounded, so this returns instead of hanging
        with pytest.raises(TrackingError) as info:
            run_study(spec, recorder=StopsServer(MlflowRecorder(spec.tracking_uri), server))
        assert time.monotonic() - started < 180
    finally:
        server.stop()
    message = str(info.value)
    assert message.startswith(f"tracking_uri='{server.url}': MLflow ") and "rerun the same command" in message
    assert "(waited 3 s for the server)" in message
    (trial,) = optuna.load_study(study_name="failures", storage=spec.storage).trials  # stopped: no second trial
    assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"] is True  # retried on resume
    assert trial.user_attrs["fail_reason"].startswith(f"tracking_uri='{server.url}'")


# -- teacher and baseline reuse ---------------------------------------------------------------

def test_teacher_is_reused_only_for_the_same_config_and_data(tmp_path, subset_root):
    from kdsweep.core.data import load_dataset
    from kdsweep.study.teacher import obtain

    data = load_dataset("cifar10", subset_root, limit_per_file=20)
    other_data = load_dataset("cifar10", subset_root, limit_per_file=21)
    cfg = TrainConfig(arch="resnet8", width=0.25, epochs=1, batch_size=50, lr=0.05)
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def teacher(c: TrainConfig, d):
        recorder = MlflowRecorder(uri, artifacts=str(tmp_path / "artifacts"), workdir=tmp_path)
        recorder.begin_study("reuse", {})
        return obtain("teacher", c, d, recorder=recorder, workdir=tmp_path, tags={"study": "reuse"})

    first = teacher(cfg, data)
    again = teacher(cfg, data)
    assert not first.reused and again.reused and again.run_id == first.run_id
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    # a changed recipe or other data is trained anew, never served the stale teacher
    for changed, d in ((dataclasses.replace(cfg, label_smoothing=0.1), data), (cfg, other_data)):
        fresh = teacher(changed, d)
        assert not fresh.reused and fresh.run_id != first.run_id
    assert teacher(dataclasses.replace(cfg, device="cuda:1"), data).reused  # the device changes no weight


def test_every_training_field_enters_the_reuse_key():
    base = TrainConfig(arch="resnet8")
    changed = {"arch": "resnet14", "width": 0.5, "epochs": 2, "batch_size": 8, "optimizer": "adam", "lr": 0.2,
               "momentum": 0.8, "nesterov": False, "weight_decay": 0.0, "schedule": "constant",
               "label_smoothing": 0.1, "ema_decay": 0.9, "method": "kd", "method_params": {"alpha": 0.5}, "patience": 3,
               "augment": False, "seed": 1, "precision": "bf16", "channels_last": False,
               "arch_args": '{"zero_init":true}', "arch_source": "file /x/nets.py sha256:00", "init": __file__,
               "init_sha256": "0" * 64, "milestones": (2, 3), "gamma": 0.5,
               "student_features": ("layers.1",), "teacher_features": ("layers.2",)}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"device"}
    assert set(changed) >= fields, f"new TrainConfig fields need a case here: {fields - set(changed)}"
    key = base.fingerprint(data_identity="d")
    for name in sorted(fields - {"milestones", "gamma"}):
        # method_params belong to a method: changed under kd, and ce takes none
        other = {"method_params": changed[name], "method": "kd"} if name == "method_params" else {name: changed[name]}
        assert dataclasses.replace(base, **other).fingerprint(data_identity="d") != key, name
    # the step schedule's milestones and factor count where the schedule uses them (and only there,
    # so runs from before these fields keep their keys)
    step = TrainConfig(arch="resnet8", schedule="multistep", milestones=(2,))
    for name in ("milestones", "gamma"):
        assert dataclasses.replace(step, **{name: changed[name]}).fingerprint(data_identity="d") != \
            step.fingerprint(data_identity="d"), name
        assert dataclasses.replace(base, **{name: changed[name]}).fingerprint(data_identity="d") == key, name
    kd = TrainConfig(arch="resnet8", method="kd")
    assert dataclasses.replace(kd, method_params={"alpha": 0.5}).fingerprint(data_identity="d") != \
        kd.fingerprint(data_identity="d")
