"""A study's teacher source: the view table when it is cheaper than the online teacher, cached by key."""

from pathlib import Path

import pytest
import torch

from kdsweep.core.config import TrainConfig
from kdsweep.core.data import DeviceLoader, synthetic_imageset
from kdsweep.core.models import build_model
from kdsweep.core.precision import teacher_bf16
from kdsweep.core.teachers import OnlineTeacher, TableTeacher
from kdsweep.study.recorder import NullRecorder
from kdsweep.study.runner import run_study
from kdsweep.study.spec import StudySpec, load_spec
from kdsweep.study.tables import describe_source, teacher_source, wants_table

from conftest import write_spec


def _spec(**kw) -> StudySpec:
    base = {"name": "t", "teacher": {"arch": "resnet8"}, "student": {"arch": "resnet8", "recipe": {"epochs": 10}},
            "n_trials": 8, "seeds": [0, 1]}
    return StudySpec.model_validate({**base, **kw})


def test_auto_builds_the_table_when_it_takes_fewer_teacher_forwards():
    # online: n_trials * seeds * epochs teacher passes over the data; the table: 162 (pad 4)
    assert wants_table(_spec()) is False  # 8 * 2 * 10 = 160 < 162
    assert wants_table(_spec(n_trials=9)) is True  # 180 >= 162
    assert wants_table(_spec(n_trials=2)) is False  # 40 passes
    assert wants_table(_spec(n_trials=2, teacher_table="on")) is True
    assert wants_table(_spec(n_trials=99, teacher_table="off")) is False
    no_aug = {"arch": "resnet8", "recipe": {"epochs": 100, "augment": False}}
    assert wants_table(_spec(student=no_aug, teacher_table="on")) is False  # no views to tabulate


def test_unknown_teacher_table_value_is_refused():
    with pytest.raises(Exception, match="teacher_table"):
        _spec(teacher_table="sometimes")


TINY = {  # 40 training images: the table is 40 x 162 teacher forwards
    "data": None, "teacher_table": "on", "search": {"kd": {"temperature": {"choices": [4.0]}}, "width": {"choices": [0.25]}},
    "teacher": {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 1, "batch_size": 16, "lr": 0.05}},
    "student": {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 2, "batch_size": 16, "lr": 0.05}},
}


def test_study_with_the_table_runs_trials_from_a_cached_table(tmp_path, subset_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # note which source gave each batch its teacher logits (the real table and teacher still answer)
    served = []
    for source in (TableTeacher, OnlineTeacher):
        def noted(self, batch, call=source.__call__, kind=source.__name__):
            served.append((kind, batch.view is not None))
            return call(self, batch)

        monkeypatch.setattr(source, "__call__", noted)
    tiny = {**TINY, "data": {"dataset": "cifar10", "root": str(subset_root), "limit_per_file": 8}}
    spec = load_spec(write_spec(tmp_path / "tiny.yaml", subset_root, n_trials=2, **tiny))
    outcome = run_study(spec, recorder=NullRecorder(), workdir=Path("mlruns"))
    assert outcome.complete == 2
    # every training batch of the trials: a lookup in the table (not the online teacher)
    assert served and set(served) == {("TableTeacher", True)}
    tables = list(Path("mlruns/tables").glob("teacher-table-*.pt"))
    assert len(tables) == 1
    stamp = tables[0].stat().st_mtime_ns
    # a rerun with the same teacher and data reads the file (NullRecorder retrains the same teacher);
    # its trial draws another temperature, so it trains (the same config would resume the first
    # study's finished checkpoint and train nothing)
    served.clear()
    other = {**tiny, "search": {**tiny["search"], "kd": {"temperature": {"choices": [2.0]}}}}
    spec2 = load_spec(write_spec(tmp_path / "tiny2.yaml", subset_root, n_trials=1, name="tiny2", **other))
    assert run_study(spec2, recorder=NullRecorder(), workdir=Path("mlruns")).complete == 1
    assert [t.stat().st_mtime_ns for t in Path("mlruns/tables").glob("*.pt")] == [stamp]
    assert served and set(served) == {("TableTeacher", True)}  # and its trial's batches came from it


def test_teacher_source_types_and_how_runs_record_them(tmp_path):
    data = synthetic_imageset(n_train=2, n_test=2, num_classes=4, size=16)
    net = build_model("resnet8", num_classes=4, width=0.25)
    on = teacher_source(_spec(teacher_table="on"), data, net, device="cpu", workdir=tmp_path)
    off = teacher_source(_spec(teacher_table="off"), data, net, device="cpu", workdir=tmp_path)
    bf16 = teacher_bf16("auto", torch.device("cpu"))  # bf16 only on a CPU that computes it natively
    assert isinstance(on, TableTeacher) and on.table.logits.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert isinstance(off, OnlineTeacher)
    # the trainer sets the online teacher's precision by the same rule, so the table covers its batches
    precision = _spec().student.recipe.precision
    on.to("cpu", bf16=teacher_bf16(precision, torch.device("cpu")))
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=2, device="cpu", mean=data.mean, std=data.std,
                          train=True, pad=4)
    assert on.for_run(data.identity, loader) is on
    run = TrainConfig(arch="resnet8", precision=precision, device="cpu")
    name = "bf16" if bf16 else "fp32"
    assert describe_source(on, run) == f"view table, {name}" and describe_source(off, run) == f"online, {name}"
    assert describe_source(off, TrainConfig(arch="resnet8", precision="fp32")) == "online, fp32"


def test_a_search_over_feature_methods_alone_builds_no_table():
    # the table holds logits; feature trials run the teacher with taps in every step
    assert not wants_table(_spec(teacher_table="on", student={"arch": "resnet8", "method": "at"}))
    mixed = _spec(teacher_table="on", search={"method": {"choices": ["kd", "fitnet"]}})
    assert wants_table(mixed)  # the kd trials read it


def test_a_feature_run_records_its_connector_size(tmp_path):
    from kdsweep.core.trainer import train
    from kdsweep.study.tables import feature_params

    data = synthetic_imageset(64, 32, num_classes=4, size=16, seed=6)
    torch.manual_seed(0)
    source = OnlineTeacher(build_model("resnet8", num_classes=4), fold_bn=True)
    cfg = TrainConfig(arch="resnet8", width=0.5, epochs=1, batch_size=32, method="fitnet")
    result = train(cfg, data, teacher=source)
    assert feature_params(source, cfg, data) == {"connector_params": result.extras["connector_params"]} != {}
    assert feature_params(source, TrainConfig(arch="resnet8", method="kd"), data) == {}
