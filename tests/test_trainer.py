"""The trainer on the CPU: it learns, EMA is real, checkpoints resume exactly, KD uses the teacher."""

import dataclasses

import pytest
import torch

from conftest import kd_config
from kdsweep.core.checkpoint import load_checkpoint
from kdsweep.core.config import TrainConfig
from kdsweep.core.data import synthetic_imageset
from kdsweep.core.models import build_model
from kdsweep.core.teachers import OnlineTeacher
from kdsweep.core.trainer import DivergedError, evaluate_split, train


@pytest.fixture(scope="module")
def data():
    return synthetic_imageset(n_train=256, n_test=128, num_classes=4, size=16, seed=0)


def cfg(**kw) -> TrainConfig:
    base = dict(arch="resnet8", width=0.25, epochs=3, batch_size=32, lr=0.05, device="cpu")
    return kd_config(**{**base, **kw})


def test_loss_decreases_and_accuracy_beats_chance(data):
    result = train(cfg(epochs=4), data)
    losses = [m.train_loss for m in result.history]
    assert losses[-1] < losses[0]
    assert result.final.test_acc > 0.5  # 4 classes: chance is 0.25
    assert [m.epoch for m in result.history] == [1, 2, 3, 4]


def test_ema_weights_differ_from_raw_and_are_both_evaluated(data):
    result = train(cfg(ema_decay=0.9), data)
    assert result.ema_model is not None
    raw = dict(result.model.named_parameters())
    ema = dict(result.ema_model.module.named_parameters())
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    assert all(m.test_acc_ema is not None for m in result.history)
    s = result.summary()
    assert s.final_test_acc == s.final_test_acc_ema  # the scored weights are the EMA ones


def test_no_ema_records_no_ema_metric(data):
    result = train(cfg(epochs=1), data)
    assert result.ema_model is None and result.final.test_acc_ema is None
    assert "test_acc_ema" not in result.final.as_dict()


def test_resume_from_checkpoint_matches_an_uninterrupted_run(data, tmp_path):
    full = train(cfg(epochs=3, ema_decay=0.5), data)
    ckpt = tmp_path / "run.pt"

    class Stop(Exception):
        pass

    def stop_after_two(m):
        if m.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(cfg(epochs=3, ema_decay=0.5), data, checkpoint_path=ckpt, on_epoch=stop_after_two)
    assert load_checkpoint(ckpt)["epoch"] == 2
    resumed = train(cfg(epochs=3, ema_decay=0.5), data, checkpoint_path=ckpt)
    assert resumed.resumed_from_epoch == 2
    # CPU training is deterministic: the resumed run ends bit-identical to the uninterrupted one
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in full.history]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_another_config_is_not_resumed(data, tmp_path):
    ckpt = tmp_path / "run.pt"
    train(cfg(epochs=1), data, checkpoint_path=ckpt)
    other = train(cfg(epochs=1, lr=0.02), data, checkpoint_path=ckpt)
    assert other.resumed_from_epoch == 0


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_distillation_uses_the_teacher(data):
    # two different teachers (other initial weights), one student seed and the same batches: a KD
    # student must come out different, so the teacher's logits reach its loss
    teachers = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        teachers.append(OnlineTeacher(build_model("resnet8", num_classes=4, width=0.5)))
    kd = [train(cfg(epochs=1, alpha=0.9, temperature=4.0), data, teacher=t) for t in teachers]
    assert not _weights_equal(kd[0].model, kd[1].model), "two teachers trained bit-identical students"
    assert kd[0].final.loss_terms["kd"] != pytest.approx(kd[1].final.loss_terms["kd"])
    # alpha 0 ignores the teacher: then the same two teachers leave the student bit-identical (what
    # differs above is the KD term, not some other effect of passing a teacher)
    ce = [train(cfg(epochs=1, alpha=0.0), data, teacher=t) for t in teachers]
    assert _weights_equal(ce[0].model, ce[1].model)


def test_alpha_without_teacher_is_refused(data):
    with pytest.raises(ValueError, match="teacher"):
        train(cfg(alpha=0.5), data)


@pytest.mark.parametrize("kw", [dict(optimizer="adam", lr=3e-3, schedule="cosine"),
                                dict(schedule="onecycle"), dict(schedule="constant", label_smoothing=0.1)])
def test_optimizers_and_schedules_train(data, kw):
    result = train(cfg(epochs=2, **kw), data)
    assert result.final.test_acc > 0.25


def test_cosine_schedule_ends_near_zero(data):
    result = train(cfg(epochs=2), data)
    assert result.final.lr < 1e-3 * 0.05 + 1e-9


def test_early_stopping_stops_after_patience(data):
    # lr tiny enough that accuracy stops improving at once
    result = train(cfg(epochs=10, lr=1e-7, patience=2, schedule="constant"), data)
    assert result.stopped_early and len(result.history) < 10


def test_divergence_raises(data):
    with pytest.raises(DivergedError, match="nan|inf"):
        train(cfg(epochs=1, lr=1e12, schedule="constant", weight_decay=0), data)


def test_same_seed_same_metrics(data):
    a, b = train(cfg(epochs=2), data), train(cfg(epochs=2), data)
    assert [dataclasses.replace(m, epoch_seconds=0, images_per_second=0) for m in a.history] == \
           [dataclasses.replace(m, epoch_seconds=0, images_per_second=0) for m in b.history]


class ConstantClass(torch.nn.Module):
    """Predicts class ``k`` for every image: its accuracy on a split is exactly k's share of the labels."""

    def __init__(self, k: int, num_classes: int = 4) -> None:
        super().__init__()
        self.k, self.num_classes = k, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.full((len(x),), self.k), self.num_classes).float()


def test_evaluate_split_gives_each_split_its_own_accuracy(data):
    from kdsweep.core.split import hold_out

    # labels drawn unevenly, so each class has another share in each split and a mixed-up split shows
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    uneven = dataclasses.replace(data, train_y=torch.multinomial(probs, len(data.train_y), True, generator=g),
                                 test_y=torch.multinomial(probs.flip(0), len(data.test_y), True, generator=g))
    held = hold_out(uneven, 0.25, seed=0)
    shares = set()
    for k in range(4):
        train_acc, test_acc, val_acc = evaluate_split(ConstantClass(k), uneven)
        assert val_acc is None  # no validation split held out of this data
        assert train_acc == (uneven.train_y == k).sum().item() / len(uneven.train_y)
        assert test_acc == (uneven.test_y == k).sum().item() / len(uneven.test_y)
        _, _, val_acc = evaluate_split(ConstantClass(k), held)
        assert val_acc == (held.val_y == k).sum().item() / len(held.val_y)
        shares |= {train_acc, test_acc}
    assert len(shares) == 8  # eight distinct counts: no split could stand in for another
