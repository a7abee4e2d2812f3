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


# ---------------------------------------------------------------- what the MLflow UI shows of a run


@pytest.fixture
def data_recorder(tmp_path, monkeypatch, kd_data):
    from kdsweep.study.recorder import describe_data

    monkeypatch.chdir(tmp_path)
    rec = MlflowRecorder(f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "artifacts"),
                         workdir=tmp_path / "work")
    rec.begin_study("s3", {"spec": {}, "data_identity": kd_data.identity, "data": describe_data(kd_data, tmp_path)})
    return rec


def finished_student(rec, data, tmp_path: Path) -> tuple[str, torch.nn.Module]:
    from kdsweep.core.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=data.num_classes, width=0.25).eval()
    ckpt = tmp_path / "student.pt"
    torch.save({"arch": "resnet8", "width": 0.25, "num_classes": data.num_classes, "state_dict": model.state_dict()},
               ckpt)
    run_id = rec.start(RunInfo("distilled", "k9", {"arch": "resnet8", "width": 0.25, "seed": 0, "alpha": 0.5},
                               {"study": "s3", "trial": "0", "seed": "0"}))
    rec.finish(run_id, RunSummary(final_epoch=2, final_test_acc=0.25, final_train_acc=0.5, num_params=10), ckpt)
    return run_id, model


def test_study_experiment_is_marked_for_model_development(data_recorder):
    exp = MlflowClient(data_recorder.uri).get_experiment(data_recorder.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert data_recorder.runs_url is None  # a local store has no UI page to print
    from kdsweep.tracking.logger import runs_url

    assert runs_url("http://127.0.0.1:5000/", "7").startswith("http://127.0.0.1:5000/#/experiments/7/runs")


def test_run_logs_its_data_splits_as_inputs(data_recorder, kd_data, tmp_path):
    run_id, _ = finished_student(data_recorder, kd_data, tmp_path)
    run = MlflowClient(data_recorder.uri).get_run(run_id)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"synthetic-train", "synthetic-test"}  # no validation split in this data yet
    train = inputs["synthetic-train"]
    assert train.dataset.digest == kd_data.identity[:36] and str(tmp_path) in train.dataset.source
    assert '"num_rows": 192' in train.dataset.profile
    assert {t.key: t.value for t in train.tags}["mlflow.data.context"] == "training"
    # the parent run shows the study's data too
    parent = MlflowClient(data_recorder.uri).get_run(data_recorder.parent_id)
    assert {i.dataset.name for i in parent.inputs.dataset_inputs} == {"synthetic-train", "synthetic-test"}


def test_validation_split_is_logged_when_the_data_has_one(kd_data, tmp_path):
    from dataclasses import dataclass

    from kdsweep.study.recorder import describe_data

    @dataclass
    class WithValidation:  # the attributes a validation split brings (issue 13): labels and own identity
        name = kd_data.name
        identity = kd_data.identity
        num_classes = kd_data.num_classes
        mean, std = kd_data.mean, kd_data.std
        train_y = kd_data.train_y[:150]
        val_y = kd_data.train_y[150:]
        val_identity = "0123456789abcdef-val"
        test_x, test_y = kd_data.test_x, kd_data.test_y
        image_size = kd_data.image_size

    splits = describe_data(WithValidation(), tmp_path)["splits"]
    assert [(s["split"], s["rows"]) for s in splits] == [("train", 150), ("validation", 42), ("test", 64)]
    assert splits[1]["digest"] == "0123456789abcdef-val" and splits[0]["digest"] == kd_data.identity


def test_final_weights_are_a_logged_model_with_the_final_metrics(data_recorder, kd_data, tmp_path):
    import mlflow.pyfunc

    run_id, model = finished_student(data_recorder, kd_data, tmp_path)
    client = MlflowClient(data_recorder.uri)
    found = client.search_logged_models([data_recorder.experiment_id], filter_string="metrics.final_test_acc > 0.2")
    assert [m.source_run_id for m in found] == [run_id]
    logged = found[0]
    assert logged.name == "distilled-t0-s0" and logged.tags["role"] == "distilled"
    assert str(logged.status).endswith("READY") and logged.params["alpha"] == "0.5"
    metrics = {m.key: m for m in logged.metrics}
    assert metrics["final_test_acc"].value == 0.25 and metrics["final_test_acc"].dataset_name == "synthetic-test"
    run = client.get_run(run_id)
    assert run.data.metrics["final_test_acc"] == 0.25  # still the run's metric, as the report reads it
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]
    assert [f.path for f in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/student.pt"]  # resume

    # MLflow's own loader: raw uint8 images in, the model's logits out
    import mlflow

    mlflow.set_tracking_uri(data_recorder.uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    logits = loaded.predict(kd_data.test_x.numpy())
    mean = torch.tensor(kd_data.mean).view(1, -1, 1, 1)
    std = torch.tensor(kd_data.std).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = model((kd_data.test_x.float() / 255 - mean) / std)
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)


def test_system_metrics_are_sampled_while_a_run_is_open(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's own setting
    rec = MlflowRecorder(f"sqlite:///{tmp_path}/mlflow.db", artifacts=str(tmp_path / "artifacts"),
                         workdir=tmp_path / "work", system_metrics=True)
    rec.begin_study("s4", {"spec": {}})
    run_id = rec.start(RunInfo("teacher", "k5", {"arch": "resnet8", "width": 1.0, "seed": 0}))
    time.sleep(1.5)
    rec.finish(run_id, RunSummary(final_epoch=1, final_test_acc=0.5, final_train_acc=0.5, num_params=10), None)
    metrics = MlflowClient(rec.uri).get_run(run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0 and metrics["system/system_memory_usage_megabytes"] > 0
    # off by default for a local store
    assert MlflowRecorder(f"sqlite:///{tmp_path}/other.db").system_metrics is False


INTERLEAVED = """
import sys, warnings
from pathlib import Path

import mlflow.pyfunc

from kdsweep.core.data import synthetic_imageset
from kdsweep.study.recorder import describe_data
from kdsweep.tracking.logger import MlflowRecorder

sys.path.insert(0, sys.argv[2])
from test_logger import finished_student  # the same run as the in-process tests log

tmp = Path(sys.argv[1])
data = synthetic_imageset(n_train=64, n_test=32, num_classes=4, size=16, seed=0)
rec = MlflowRecorder(f"sqlite:///{tmp}/mlflow.db", artifacts=str(tmp / "artifacts"), workdir=tmp / "work")
rec.begin_study("s", {"spec": {}, "data_identity": data.identity, "data": describe_data(data, tmp)})
real_save = mlflow.pyfunc.save_model
with warnings.catch_warnings(record=True) as caught:
    other_thread = warnings.catch_warnings()  # entered before the model is saved...
    other_thread.__enter__()

    def save_while_the_other_thread_leaves(*args, **kwargs):
        other_thread.__exit__(None, None, None)  # ...and left while it is
        return real_save(*args, **kwargs)

    mlflow.pyfunc.save_model = save_while_the_other_thread_leaves
    finished_student(rec, data, tmp)
print("models", len(rec.client.search_logged_models([rec.experiment_id])))
print("shown", [str(w.message)[:60] for w in caught if "input example" in str(w.message)])
"""


def test_no_input_example_warning_even_when_another_thread_restores_the_filters(tmp_path):
    # Trials log models from several threads (jobs: K): another thread's `catch_warnings` block can
    # end while a model is saved, restoring the filters from before it. A real process (pytest
    # resets the filters a module sets at import), with that interleaving played in order.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", INTERLEAVED, str(tmp_path), str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "models 1" in out.stdout, out.stdout
    assert "shown []" in out.stdout, out.stdout + out.stderr[-2000:]
