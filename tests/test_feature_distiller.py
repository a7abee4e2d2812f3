"""Feature methods in the one training loop: they learn, resume exactly with their connectors, pair
different architectures, and leave the exported student as it was built (no hooks, no connector)."""

from __future__ import annotations

import pytest
import torch

from kdsweep.core.checkpoint import load_checkpoint
from kdsweep.core.config import TrainConfig
from kdsweep.core.data import synthetic_imageset
from kdsweep.core.models import build_model
from kdsweep.core.teachers import OnlineTeacher, TableTeacher, table_for
from kdsweep.core.trainer import train

FEATURE_METHODS = ["fitnet", "at", "rkd", "crd", "reviewkd"]
# short runs: CRD with a few hundred negatives (the bank has 256 rows), ReviewKD without its 20-epoch warm-up
QUICK = {"crd": {"negatives": 256}, "reviewkd": {"warmup": 1}}


@pytest.fixture(scope="module")
def data():
    return synthetic_imageset(256, 128, num_classes=4, size=16, seed=3)


@pytest.fixture(scope="module")
def teacher(data):
    torch.set_num_threads(1)
    result = train(TrainConfig(arch="resnet8", epochs=2, batch_size=32, lr=0.05), data)
    assert result.final.test_acc > 0.9  # the synthetic classes are easy: a teacher worth distilling
    return OnlineTeacher(result.model, fold_bn=True)


def student_cfg(method: str, **kw) -> TrainConfig:
    fields = dict(arch="resnet8", width=0.5, epochs=3, batch_size=32, lr=0.05, method=method,
                  method_params=QUICK.get(method, {}))
    fields.update(kw)
    return TrainConfig(**fields)


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_a_short_cpu_run_learns(method, data, teacher):
    result = train(student_cfg(method), data, teacher=teacher)
    first, last = result.history[0], result.history[-1]
    assert last.train_loss < first.train_loss
    assert last.test_acc > 0.4  # 4 balanced classes: chance is 0.25
    assert set(last.loss_terms) > {"ce"} and abs(sum(last.loss_terms.values()) - last.train_loss) < 1e-3 * last.train_loss


@pytest.mark.parametrize("method", ["fitnet", "crd", "reviewkd"])
def test_resume_is_exact_with_the_connector(method, data, teacher, tmp_path):
    straight = tmp_path / "straight.pt"
    train(student_cfg(method), data, teacher=teacher, checkpoint_path=straight)

    class Killed(Exception):
        pass

    def kill_after_two(m):
        if m.epoch == 2:
            raise Killed

    resumed = tmp_path / "resumed.pt"
    with pytest.raises(Killed):
        train(student_cfg(method), data, teacher=teacher, checkpoint_path=resumed, on_epoch=kill_after_two)
    saved = load_checkpoint(resumed)
    assert saved["epoch"] == 2 and "connector" in saved
    result = train(student_cfg(method), data, teacher=teacher, checkpoint_path=resumed)
    assert result.resumed_from_epoch == 2
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    for part in ("model", "connector"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after the resume"
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]


@pytest.mark.parametrize("method,student", [(m, "cnn_student") for m in FEATURE_METHODS] +
                         [("fitnet", "resnet8"), ("reviewkd", "resnet8")])
def test_a_deeper_wider_teacher_pairs_with_a_different_student(method, student, data):
    # resnet18 x0.25: 4 stages of 16..128 channels, down to 2x2 at 16px; resnet8: 3 stages, down to
    # 4x4; cnn_student x0.5: another family, 4 stages of 12..48 channels, a hidden layer before its head
    torch.manual_seed(0)
    t = OnlineTeacher(build_model("resnet18", num_classes=4, width=0.25))
    cfg = student_cfg(method, arch=student, epochs=1)
    result = train(cfg, data, teacher=t)
    assert all(torch.isfinite(torch.tensor(v)) for v in result.final.loss_terms.values())
    has_connector = method in ("fitnet", "crd", "reviewkd")
    assert (result.extras["connector_params"] > 0) == has_connector


def test_the_connector_trains_and_the_exported_student_is_the_bare_model(data, teacher, tmp_path):
    import pickle

    path = tmp_path / "run.pt"
    cfg = student_cfg("fitnet", epochs=1, arch="cnn_student", ema_decay=0.9)
    result = train(cfg, data, teacher=teacher, checkpoint_path=path)
    fresh = build_model("cnn_student", num_classes=4, width=0.5)
    assert result.model.state_dict().keys() == fresh.state_dict().keys()  # no connector inside
    for exported in (result.model, result.scored_model):  # raw and EMA weights: hooks off, picklable (MLflow)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in exported.modules())
        pickle.dumps(exported)
    # the regressor left its seeded start (the same run's parts built again): the student's optimizer stepped it
    from kdsweep.core.feature_distiller import FeatureDistiller
    from kdsweep.core.methods import LOSSES

    start = FeatureDistiller(LOSSES.get("fitnet"), dict(cfg.method_params), fresh, teacher, image_shape=(3, 16, 16),
                             labels=data.train_y, device=torch.device("cpu"), seed=cfg.seed).connector
    trained = load_checkpoint(path)["connector"]
    assert trained["conv.weight"].shape == start.conv.weight.shape
    assert not torch.equal(trained["conv.weight"], start.conv.weight)
    assert result.extras["connector_params"] == sum(v.numel() for k, v in trained.items()
                                                    if k in ("conv.weight", "bn.weight", "bn.bias"))


def test_a_feature_method_runs_the_teacher_where_a_table_serves_logit_methods():
    small = synthetic_imageset(64, 32, num_classes=4, size=8, seed=4)  # a table is 162 views per image
    torch.manual_seed(0)
    teacher = OnlineTeacher(build_model("resnet8", num_classes=4), fold_bn=True)
    source = TableTeacher(table_for(teacher, small, device="cpu", bf16=False, channels_last=False), teacher)
    kd = train(student_cfg("kd", epochs=1), small, teacher=source)
    at = train(student_cfg("at", epochs=1), small, teacher=source)  # taps need the network, not the table
    assert "at" in at.final.loss_terms and "kd" in kd.final.loss_terms
    from kdsweep.study.tables import describe_source

    assert describe_source(source, student_cfg("kd")).startswith("view table")
    assert describe_source(source, student_cfg("at")).startswith("online (feature method")


def test_named_layers_are_tapped(data, teacher):
    cfg = student_cfg("at", epochs=1, arch="cnn_student", student_features=["features.12", "features.19"],
                      teacher_features=["layers.1", "layers.2"])
    assert cfg.as_params()["student_features"] == "features.12,features.19"
    result = train(cfg, data, teacher=teacher)
    assert result.final.loss_terms["at"] > 0
    with pytest.raises(Exception, match=r"student PlainCNN has no layer 'features.99'; closest: \['features.9"):
        train(student_cfg("at", epochs=1, arch="cnn_student", student_features=["features.99"]), data, teacher=teacher)
