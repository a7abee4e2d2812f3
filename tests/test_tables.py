"""A study's teacher source: the view table when it is cheaper than the online teacher, cached by key."""

from pathlib import Path

import pytest

from kdsweep.core.teachers import OnlineTeacher, TableTeacher
from kdsweep.study.recorder import NullRecorder
from kdsweep.study.runner import run_study
from kdsweep.study.spec import StudySpec, load_spec
from kdsweep.study.tables import wants_table

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
    "data": None, "teacher_table": "on", "search": {"temperature": {"choices": [4.0]}, "width": {"choices": [0.25]}},
    "teacher": {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 1, "batch_size": 16, "lr": 0.05}},
    "student": {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 2, "batch_size": 16, "lr": 0.05}},
}


def test_study_with_the_table_runs_trials_from_a_cached_table(tmp_path, subset_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = {**TINY, "data": {"dataset": "cifar10", "root": str(subset_root), "limit_per_file": 8}}
    spec = load_spec(write_spec(tmp_path / "tiny.yaml", subset_root, n_trials=2, **tiny))
    outcome = run_study(spec, recorder=NullRecorder(), workdir=Path("mlruns"))
    assert outcome.complete == 2
    tables = list(Path("mlruns/tables").glob("teacher-table-*.pt"))
    assert len(tables) == 1
    stamp = tables[0].stat().st_mtime_ns
    # a rerun with the same teacher and data reads the file (NullRecorder retrains the same teacher)
    spec2 = load_spec(write_spec(tmp_path / "tiny2.yaml", subset_root, n_trials=1, name="tiny2", **tiny))
    assert run_study(spec2, recorder=NullRecorder(), workdir=Path("mlruns")).complete == 1
    assert [t.stat().st_mtime_ns for t in Path("mlruns/tables").glob("*.pt")] == [stamp]


def test_teacher_source_types(tmp_path):
    import torch

    from kdsweep.core.data import synthetic_imageset
    from kdsweep.core.models import build_model
    from kdsweep.study.tables import teacher_source

    data = synthetic_imageset(n_train=2, n_test=2, num_classes=4, size=16)
    net = build_model("resnet8", num_classes=4, width=0.25)
    on = teacher_source(_spec(teacher_table="on"), data, net, device="cpu", workdir=tmp_path)
    off = teacher_source(_spec(teacher_table="off"), data, net, device="cpu", workdir=tmp_path)
    assert isinstance(on, TableTeacher) and on.table.logits.dtype == torch.float32  # fp32 on the CPU
    assert isinstance(off, OnlineTeacher)
