"""studies/imagenet-resnet34-resnet18.yaml on a generated folder in ImageNet's layout: the shipped spec
passes the preflight (data, both torchvision models at 224 px), and a 1-epoch run of it streams
end to end through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, run_cli
from photo_layouts import write_jpeg_folder

from kdsweep.study.spec import load_spec

SPEC = REPO / "studies" / "imagenet-resnet34-resnet18.yaml"


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """train/<wnid>/*.jpg and val/<wnid>/*.jpg, mixed sizes: the torchvision ImageNet layout, small (the
    shipped batch size, 256, needs that many training images)."""
    return write_jpeg_folder(tmp_path_factory.mktemp("imagenet"), classes=3, per_class=90, val_per_class=2, size=32)


def test_shipped_spec_passes_the_preflight_on_the_imagenet_layout(imagenet):
    from kdsweep.study.preflight import preflight

    # as shipped, but for the folder and a validation split that fits 24 images
    spec = load_spec(SPEC, overrides={"data_root": str(imagenet), "set": ["data.val_split=3"]})
    assert (spec.data.loader, spec.data.augment, spec.data.image_size) == ("stream", "imagenet", 224)
    assert (spec.teacher.arch, spec.student.arch) == ("torchvision_resnet34", "torchvision_resnet18")
    data = preflight(spec, source=str(SPEC), stores=())  # models built and run on a 224 px image
    assert data.loader == "stream" and data.num_classes == 3 and len(data.val) == 3 and len(data.train) == 267


def test_one_epoch_of_the_study_streams_end_to_end(imagenet, tmp_path):
    small = ["--device", "cpu", "--n-trials", "1", "--set", "data.val_split=3", "--set", "data.image_size=32",
             "--set", "data.limit_per_file=8",  # the first 8 images of each class folder
             "--set", "data.workers=1"]
    for role in ("teacher", "student"):
        small += ["--set", f"{role}.recipe.epochs=1", "--set", f"{role}.recipe.batch_size=8"]
    proc = run_cli("study", "run", str(SPEC), "--data-root", str(imagenet), *small, cwd=tmp_path,
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loader: stream (data.loader=stream)" in proc.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("imagenet-resnet34-resnet18")
    runs = {r.data.tags["role"]: r for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")}
    assert {"teacher", "baseline", "distilled"} <= set(runs)
    assert runs["teacher"].data.params["arch"] == "torchvision_resnet34"
    for run in runs.values():
        if run.data.tags["role"] in ("teacher", "baseline", "distilled"):
            assert run.data.params["loader"] == "stream"  # `loader` is a param of every run
            assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 1  # one epoch, logged once


def test_one_epoch_with_stored_labels_on_two_processes_streams_end_to_end(imagenet, tmp_path):
    # part 4 of issue 22: stream loader, stored soft labels (FKD) and 2 gloo processes in one run;
    # kd only (dkd reads every logit, so the shipped kd-or-dkd search is narrowed to kd)
    small = ["--device", "cpu", "--n-trials", "1", "--processes", "2", "--set", "data.val_split=3",
             "--set", "data.image_size=32", "--set", "data.limit_per_file=8", "--set", "data.workers=0",
             "--set", "search.method={choices: [kd]}", "--set", "teacher.stored_labels={crops: 2, top_k: 2}"]
    for role in ("teacher", "student"):
        small += ["--set", f"{role}.recipe.epochs=1", "--set", f"{role}.recipe.batch_size=8"]
    proc = run_cli("study", "run", str(SPEC), "--data-root", str(imagenet), *small, cwd=tmp_path,
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("imagenet-resnet34-resnet18")
    runs = {r.data.tags["role"]: r for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")}
    assert {"teacher", "baseline", "distilled"} <= set(runs)
    assert runs["distilled"].data.params["teacher_logits"] == "stored top-2 labels of 2 crops per image"
    for role in ("teacher", "baseline", "distilled"):  # trained on 2 processes, logged once by rank 0
        assert len(client.get_metric_history(runs[role].info.run_id, "val_acc")) == 1
    (store,) = (tmp_path / "mlruns" / "soft_labels").iterdir()
    assert (store / "progress.json").read_text() == '{"done": 21}'  # 8 per class x 3, less 3 held out
