"""Weights files (core/weights.py): every layout read to the same tensors, the head re-created for
``teacher.init``, a mismatch named; and a study fine-tuning a 1,000-class ``init`` file on 10 classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient
from safetensors.torch import save_file
from torch import nn

from conftest import write_spec
from kdsweep.cli import main
from kdsweep.core.checkpoint import save_checkpoint
from kdsweep.core.models import build_model
from kdsweep.core.weights import file_digest, head_names, load_as_is, load_init, read_state_dict
from kdsweep.errors import CheckpointError


def small() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=10, width=0.25)


def layouts(folder: Path, model: nn.Module) -> dict[str, Path]:
    state = model.state_dict()
    files = {"kdsweep": save_checkpoint({"arch": "resnet8", "width": 0.25, "num_classes": 10, "state_dict": state},
                                        folder / "kdsweep.pt")}
    for name, obj in (("bare", state), ("state_dict key", {"state_dict": state, "epoch": 3}),
                      ("model key", {"model": state}), ("DataParallel", {f"module.{k}": v for k, v in state.items()})):
        files[name] = folder / f"{name.replace(' ', '_')}.pth"
        torch.save(obj, files[name])
    files["safetensors"] = folder / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(files["safetensors"]))
    return files


def test_every_layout_reads_to_the_models_tensors(tmp_path):
    model = small()
    for name, path in layouts(tmp_path, model).items():
        state = read_state_dict(path)
        assert state.keys() == model.state_dict().keys(), name
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), name


def test_a_file_of_no_tensors_is_refused_in_one_line(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="holds no state_dict of tensors"):
        read_state_dict(tmp_path / "meta.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable .safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")


def test_as_is_names_the_first_mismatching_tensor_and_both_shapes(tmp_path):
    torch.save(build_model("resnet8", num_classes=100, width=0.25).state_dict(), tmp_path / "c100.pt")
    with pytest.raises(CheckpointError, match=r"tensor 'fc.weight' is \[100, 16\] in the file, \[10, 16\] in the model"):
        load_as_is(small(), tmp_path / "c100.pt", "resnet8")


@pytest.mark.parametrize("arch,head", [
    ("torchvision:resnet18", ["fc.weight", "fc.bias"]),
    ("torchvision:mobilenet_v3_small", ["classifier.3.weight", "classifier.3.bias"]),
    ("timm:resnet10t", ["fc.weight", "fc.bias"]),  # timm's get_classifier()
])
def test_head_is_the_classifier_of_each_library(arch, head):
    assert head_names(build_model(arch, num_classes=10)) == head


def test_init_recreates_only_a_head_of_another_class_count(tmp_path):
    torch.manual_seed(1)
    imagenet = build_model("torchvision:resnet18", num_classes=1000)
    save_file(imagenet.state_dict(), str(tmp_path / "imagenet.safetensors"))
    model = build_model("torchvision:resnet18", num_classes=10)
    fresh_fc = model.fc.weight.detach().clone()
    assert load_init(model, tmp_path / "imagenet.safetensors", "resnet18") == ["fc.weight", "fc.bias"]
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)  # the body comes from the file
    assert torch.equal(model.fc.weight, fresh_fc)  # the 10-class head stays the model's own init
    # a user model's head: its last nn.Linear
    user = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 1000))
    torch.save(user.state_dict(), tmp_path / "user.pt")
    mine = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 10))
    assert load_init(mine, tmp_path / "user.pt", "mine") == ["2.weight", "2.bias"]


def test_init_refuses_a_body_that_differs(tmp_path):
    torch.save(build_model("resnet8", num_classes=10, width=0.5).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"only the classifier head \['fc.weight', 'fc.bias'\] may differ.*"
                                              r"tensor 'stem.0.weight' is \[8, 3, 3, 3\] in the file, \[4, 3, 3, 3\] in the model"):
        load_init(small(), tmp_path / "wide.pt", "resnet8")


def test_study_fine_tunes_a_1000_class_init_file_on_10_classes(tmp_path, monkeypatch, subset_root):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    save_file(build_model("torchvision:mobilenet_v3_small", num_classes=1000).state_dict(),
              str(tmp_path / "imagenet.safetensors"))
    recipe = {"epochs": 1, "batch_size": 32}
    # absolute store URLs: MLflow caches its store per URL string, and a relative one would reach the
    # database of an earlier test in this process
    tracking = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="init-study", n_trials=1, search={},
                      tracking_uri=tracking, storage=f"sqlite:///{tmp_path}/mlruns/optuna.db",
                      data={"dataset": "cifar10", "root": str(subset_root), "limit_per_file": 20},
                      teacher={"arch": "torchvision:mobilenet_v3_small", "init": "imagenet.safetensors", "recipe": recipe},
                      student={"arch": "resnet8", "width": 0.25, "recipe": recipe})
    result = CliRunner().invoke(main, ["study", "run", str(spec)])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("init-study").experiment_id], "tags.role = 'teacher'")
    assert len(runs) == 1, [(r.info.status, r.data.tags, r.data.params.get("arch")) for r in runs]
    (teacher,) = runs
    p = teacher.data.params
    assert p["init_replaced"] == "classifier.3.weight,classifier.3.bias"
    assert p["init_sha256"] == file_digest(tmp_path / "imagenet.safetensors")  # part of the reuse key
    assert teacher.data.metrics["final_epoch"] == 1  # fine-tuned, not used as-is
