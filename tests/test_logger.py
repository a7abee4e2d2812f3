"""MlflowRecorder against a real MLflow SQLite store: layout, reuse lookup, resume of a run."""

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from kdsweep.core.summary import RunSummary
from kdsweep.core.trainer import EpochMetrics
from kdsweep.errors import TrackingError
from kdsweep.study.recorder import RunInfo
from kdsweep.tracking.logger import MlflowRecorder, check_reachable


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rec = MlflowRecorder(f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "artifacts"),
                         workdir=tmp_path / "work")
    rec.begin_study("s1", {"spec": {"n_trials": 2}, "data_identity": "abc"})
    return rec


def epoch(n: int, acc: float) -> EpochMetrics:
    return EpochMetrics(epoch=n, train_loss=1.0 / n, train_acc=acc, test_acc=acc, test_acc_ema=None, lr=0.1,
                        epoch_seconds=1.0, images_per_second=100.0)


def test_finished_run_is_found_with_its_checkpoint(recorder, tmp_path):
    run_id = recorder.start(RunInfo("teacher", "k1", {"arch": "resnet8", "width": 1.0, "seed": 0}, {"study": "s1"}))
    recorder.log_epoch(run_id, epoch(1, 0.3))
    recorder.log_epoch(run_id, epoch(2, 0.5))
    ckpt = tmp_path / "teacher-k1.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, ckpt)
    recorder.finish(run_id, RunSummary(final_epoch=2, final_test_acc=0.5, final_train_acc=0.6, num_params=10), ckpt)

    found = recorder.find("teacher", "k1")
    assert found.run_id == run_id and found.summary.final_test_acc == 0.5 and found.summary.final_epoch == 2
    assert torch.load(found.checkpoint, weights_only=True)["state_dict"]["w"].sum() == 2
    assert recorder.find("teacher", "other-key") is None
    assert recorder.find("baseline", "k1") is None

    client = MlflowClient(recorder.uri)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == recorder.parent_id
    assert [m.step for m in client.get_metric_history(run_id, "test_acc")] == [1, 2]


def test_interrupted_teacher_run_is_reopened_not_duplicated(recorder):
    info = RunInfo("teacher", "k2", {"arch": "resnet8", "width": 1.0, "seed": 0}, {"study": "s1"})
    first = recorder.start(info)
    recorder.fail(first, "killed", killed=True)
    again = recorder.start(info)
    assert again == first
    assert MlflowClient(recorder.uri).get_run(first).info.status == "RUNNING"


def test_failed_run_keeps_its_reason(recorder):
    run_id = recorder.start(RunInfo("distilled", "k3", {"arch": "resnet8"}, {"study": "s1", "trial": "0", "seed": "0"}))
    recorder.fail(run_id, "DivergedError: training loss became nan")
    run = MlflowClient(recorder.uri).get_run(run_id)
    assert run.info.status == "FAILED" and "nan" in run.data.tags["failure_reason"]


def test_rerun_of_a_study_reuses_its_parent_run(recorder):
    parent = recorder.parent_id
    recorder.begin_study("s1", {"spec": {}})
    assert recorder.parent_id == parent


def test_unreachable_server_fails_fast_naming_the_uri():
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port}"):
        check_reachable(f"http://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 15


def test_spec_artifact_hides_database_passwords(recorder):
    from kdsweep.tracking.logger import redact_passwords

    assert redact_passwords('"postgresql://kd:p4ss-w.rd@127.0.0.1:5432/optuna"') == \
        '"postgresql://kd:***@127.0.0.1:5432/optuna"'
    assert redact_passwords("sqlite:///mlruns/optuna.db http://127.0.0.1:5000") == \
        "sqlite:///mlruns/optuna.db http://127.0.0.1:5000"
    recorder.parent_id = None
    recorder.begin_study("s2", {"spec": {"storage": "postgresql://kd:topsecret@127.0.0.1/optuna"}})
    text = MlflowClient(recorder.uri).download_artifacts(recorder.parent_id, "spec.json", str(recorder.workdir))
    assert "topsecret" not in Path(text).read_text()
