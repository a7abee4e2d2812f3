"""Online distillation: teacher and student trained together, through the one run machinery, on the CPU.

The teacher is the student's ``co_teacher`` (``core.trainer.CoTrainedTeacher``): a run whose
every step happens inside the student's step, on the same batch.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from click.testing import CliRunner

from kdsweep.cli import main
from conftest import kd_config
from kdsweep.core.config import TrainConfig
from kdsweep.core.data import synthetic_imageset
from kdsweep.core.packing import train_group
from kdsweep.core.trainer import RunRequest, train

COMMON = dict(epochs=2, batch_size=32, lr=0.05, device="cpu", seed=3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny nets: a second OpenMP thread only adds spinning, which a loaded 2-core machine pays dearly
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return synthetic_imageset(n_train=64, n_test=32, num_classes=4, size=16, seed=1)


def train_online(student: TrainConfig, teacher: TrainConfig, data, *, on_epoch=None, checkpoint_path=None):
    """The pair through ``train``: ``on_epoch(student_metrics, teacher_metrics)`` after each epoch."""
    last = {}
    result = train(student, data, checkpoint_path=checkpoint_path,
                   on_epoch=(lambda m: on_epoch(m, last["t"])) if on_epoch else None,
                   co_teacher=RunRequest(teacher, on_epoch=lambda m: last.update(t=m)))
    return SimpleNamespace(student=result, teacher=result.co_teacher)


def cfgs(**student) -> tuple[TrainConfig, TrainConfig]:
    """A student (with ``student`` overrides) and a teacher on the same epochs and batches."""
    shared = {**COMMON, **{k: student[k] for k in ("epochs", "batch_size") if k in student}}
    s = kd_config(arch="resnet8", width=0.25, alpha=student.pop("alpha", 0.9),
                  temperature=student.pop("temperature", 4.0), **{**COMMON, **student})
    t = kd_config(arch="resnet8", width=0.5, alpha=0.0, **shared)
    return s, t


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_both_nets_train_and_report_each_epoch():
    # enough steps (4 epochs of 256 images) for both nets to learn; the module's 64 images are too few.
    # (Over 21 data and run seeds the student ended at 0.50 to 0.81 test accuracy, its label term
    # fell 1.6x or more, the teacher ended at 0.75 or more: the bounds below hold on other CPUs too.)
    data = synthetic_imageset(n_train=256, n_test=64, num_classes=4, size=16, seed=1)
    seen = []
    out = train_online(*cfgs(epochs=4), data, on_epoch=lambda s, t: seen.append((s.epoch, t.epoch)))
    assert seen == [(1, 1), (2, 2), (3, 3), (4, 4)]
    for result in (out.student, out.teacher):
        assert [m.epoch for m in result.history] == [1, 2, 3, 4]
    first, last = out.teacher.history[0], out.teacher.final
    assert last.train_loss < first.train_loss and last.test_acc > 0.5  # 4 classes: chance is 0.25
    # the student's total loss is no measure: its KD term grows as the teacher's targets sharpen;
    # its labels' term falls, and it ends above chance
    first, last = out.student.history[0], out.student.final
    assert last.loss_terms["ce"] < 0.8 * first.loss_terms["ce"] and last.train_acc > first.train_acc
    assert last.test_acc > 0.375
    assert out.student.num_params < out.teacher.num_params  # width 0.25 vs 0.5


def test_teacher_learns_from_labels_only(data):
    # the student's KD loss uses detached teacher logits: whatever the student does (its alpha,
    # temperature), the teacher's weights come out bit-identical
    a = train_online(*cfgs(alpha=0.9, temperature=4.0), data)
    b = train_online(*cfgs(alpha=0.3, temperature=8.0), data)
    assert same_weights(a.teacher.model, b.teacher.model)
    assert not same_weights(a.student.model, b.student.model)


def test_online_teacher_learns_exactly_what_it_learns_alone(data):
    # same seed, same batches, labels only: co-training changes nothing for the teacher
    student, teacher = cfgs()
    online = train_online(student, teacher, data).teacher
    alone = train(teacher, data)
    assert same_weights(online.model, alone.model)
    assert [(m.train_loss, m.val_acc, m.test_acc) for m in online.history] == \
        [(m.train_loss, m.val_acc, m.test_acc) for m in alone.history]


def test_student_learns_from_the_teacher(data):
    # alpha 0 makes the student ignore its teacher: a different teacher leaves it unchanged;
    # with alpha > 0 the teacher's logits move the student
    s0, t = cfgs(alpha=0.0)
    other_teacher = kd_config(arch="resnet8", width=0.5, alpha=0.0, **{**COMMON, "lr": 0.01})
    assert same_weights(train_online(s0, t, data).student.model, train_online(s0, other_teacher, data).student.model)
    s9, _ = cfgs(alpha=0.9)
    assert not same_weights(train_online(s9, t, data).student.model,
                            train_online(s9, other_teacher, data).student.model)


def test_resumes_both_nets_from_the_checkpoint(data, tmp_path):
    s, t = cfgs()
    whole = train_online(s, t, data)

    def stop_after_first(sm, tm):
        if sm.epoch == 1:
            raise KeyboardInterrupt

    ckpt = tmp_path / "pair.pt"
    with pytest.raises(KeyboardInterrupt):
        train_online(s, t, data, on_epoch=stop_after_first, checkpoint_path=ckpt)
    resumed = train_online(s, t, data, checkpoint_path=ckpt)
    assert resumed.student.resumed_from_epoch == 1
    # the loader's batches depend only on (seed, epoch), so the resumed pair matches the whole run
    assert same_weights(resumed.student.model, whole.student.model)
    assert same_weights(resumed.teacher.model, whole.teacher.model)
    assert [m.epoch for m in resumed.teacher.history] == [1, 2]


def test_student_patience_stops_both(data):
    s, t = cfgs(patience=1, epochs=6, lr=1e-6)  # a learning rate this small never improves twice running
    out = train_online(s, t, data)
    assert out.student.stopped_early and len(out.student.history) < 6
    assert len(out.teacher.history) == len(out.student.history)


@pytest.mark.parametrize("student, teacher, word", [
    (dict(epochs=2), dict(epochs=3), "epochs"),
    (dict(batch_size=32), dict(batch_size=16), "batch_size"),
    (dict(), dict(alpha=0.5), "its method must be ce"),
])
def test_mismatched_pair_is_refused(data, student, teacher, word):
    s = kd_config(arch="resnet8", width=0.25, alpha=0.9, **{**COMMON, **student})
    t = kd_config(arch="resnet8", width=0.5, **{**COMMON, "alpha": 0.0, **teacher})
    with pytest.raises(ValueError, match=word):
        train_online(s, t, data)


def test_pairs_of_one_seed_pack_into_one_loop_and_learn_what_they_learn_alone(data):
    # each student keeps its own co-trained teacher; packed, they share the batches (one loop)
    (s1, t1), (s2, t2) = cfgs(temperature=2.0), cfgs(alpha=0.5)
    alone = [train_online(s1, t1, data), train_online(s2, t2, data)]
    packed = train_group([RunRequest(s1, co_teacher=RunRequest(t1)), RunRequest(s2, co_teacher=RunRequest(t2))], data)
    for a, p in zip(alone, packed):
        assert [m.train_loss for m in p.history] == [m.train_loss for m in a.student.history]
        assert same_weights(p.model, a.student.model) and same_weights(p.co_teacher.model, a.teacher.model)


def test_loss_terms_are_logged_for_both_nets(data):
    out = train_online(*cfgs(), data)
    assert set(out.student.final.loss_terms) == {"kd", "ce"} and set(out.teacher.final.loss_terms) == {"ce"}
    assert "loss_kd" in out.student.final.as_dict()


def _spec(tmp_path: Path, teacher: dict) -> Path:
    spec = {"name": "online", "data": {"root": str(tmp_path)},
            "teacher": {"arch": "resnet8", "mode": "online", **teacher},
            "student": {"arch": "resnet8", "recipe": {"epochs": 2}}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("teacher, field", [
    ({"checkpoint": "s.yaml"}, "teacher.mode='online'"),
    ({"recipe": {"epochs": 5}}, "teacher.recipe.epochs=5"),
    ({"seed": 3}, "teacher.seed=3"),
])
def test_spec_refuses_what_an_online_teacher_cannot_do(tmp_path, monkeypatch, teacher, field):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["study", "validate", str(_spec(tmp_path, teacher))])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], result.output
    assert not (tmp_path / "mlruns").exists()


def test_spec_accepts_online_teacher_with_the_students_epochs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["study", "validate", str(_spec(tmp_path, {"recipe": {"epochs": 2}}))])
    assert result.exit_code == 0, result.output
    assert "mode: online" in result.output
