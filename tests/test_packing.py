"""Packed runs learn exactly what they learn alone, with one teacher call per batch for the group."""

import dataclasses

import pytest
import torch

from kdsweep.core.config import TrainConfig
from kdsweep.core.data import synthetic_imageset
from kdsweep.core.models import build_model
from kdsweep.core.packing import can_pack, pack_key, train_group
from kdsweep.core.teachers import OnlineTeacher
from kdsweep.core.trainer import DivergedError, RunRequest, train


@pytest.fixture(scope="module")
def data():
    return synthetic_imageset(n_train=192, n_test=64, num_classes=4, size=16, seed=0)


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(1)
    return OnlineTeacher(build_model("resnet8", num_classes=data.num_classes, width=0.5), fold_bn=True)


class Counting:
    """An online teacher that counts its calls."""

    def __init__(self, online: OnlineTeacher) -> None:
        self.online, self.calls = online, 0

    def to(self, device, *, channels_last=None):
        self.online.to(device, channels_last=channels_last)
        return self

    def __call__(self, batch):
        self.calls += 1
        return self.online(batch)


def cfg(**kw) -> TrainConfig:
    base = dict(arch="resnet8", width=0.25, epochs=3, batch_size=32, lr=0.05, device="cpu", alpha=0.9)
    return TrainConfig(**{**base, **kw})


def same_run(a, b) -> None:
    assert [dataclasses.replace(m, epoch_seconds=0, images_per_second=0) for m in a.history] == \
        [dataclasses.replace(m, epoch_seconds=0, images_per_second=0) for m in b.history]
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_packed_runs_equal_runs_alone_and_share_the_teacher(data, teacher):
    cfgs = [cfg(temperature=2.0), cfg(temperature=6.0, alpha=0.5, lr=0.1), cfg(ema_decay=0.9, lr=0.02),
            cfg(alpha=0.0)]  # a baseline packs with distilled runs of its seed
    counting = Counting(teacher)
    packed = train_group([RunRequest(c, counting if c.distills else None) for c in cfgs], data)
    steps = 3 * (192 // 32)
    assert counting.calls == steps  # one teacher forward per batch for the group, not one per run
    for c, got in zip(cfgs, packed):
        same_run(got, train(c, data, teacher=teacher if c.distills else None))
    assert packed[2].ema_model is not None and packed[2].final.test_acc_ema is not None


def test_a_failing_run_leaves_the_group_and_the_others_go_on(data, teacher):
    class Pruned(Exception):
        pass

    def prune_at_two(m):
        if m.epoch == 2:
            raise Pruned("stop")

    reqs = [RunRequest(cfg(lr=1e6, weight_decay=0.0), teacher),  # diverges in its first epoch
            RunRequest(cfg(temperature=3.0), teacher, on_epoch=prune_at_two),
            RunRequest(cfg(temperature=5.0), teacher)]
    out = train_group(reqs, data)
    assert isinstance(out[0], DivergedError)
    assert isinstance(out[1], Pruned)
    same_run(out[2], train(cfg(temperature=5.0), data, teacher=teacher))


def test_runs_join_at_their_own_epoch_and_end_at_their_own(data, teacher, tmp_path):
    ckpt = tmp_path / "resumed.pt"
    long = cfg(epochs=4, temperature=3.0)

    class Stop(Exception):
        pass

    def stop_after_two(m):
        if m.epoch == 2:
            raise Stop

    with pytest.raises(Stop):  # a run killed after epoch 2 leaves its checkpoint
        train(long, data, teacher=teacher, checkpoint_path=ckpt, on_epoch=stop_after_two)
    short = cfg(epochs=2, temperature=7.0)
    out = train_group([RunRequest(short, teacher), RunRequest(long, teacher, checkpoint_path=ckpt)], data)
    assert [m.epoch for m in out[0].history] == [1, 2]
    assert out[1].resumed_from_epoch == 2 and [m.epoch for m in out[1].history] == [1, 2, 3, 4]
    same_run(out[0], train(short, data, teacher=teacher))
    same_run(out[1], train(long, data, teacher=teacher))


def test_only_runs_that_see_the_same_batches_pack(data, teacher):
    a = pack_key(RunRequest(cfg(), teacher), data)
    assert a == pack_key(RunRequest(cfg(temperature=9.0, lr=0.3, ema_decay=0.5), teacher), data)
    assert a != pack_key(RunRequest(cfg(seed=1), teacher), data)  # another shuffle and augmentation
    assert a != pack_key(RunRequest(cfg(batch_size=16), teacher), data)
    assert a != pack_key(RunRequest(cfg(width=1.0), teacher), data)  # x1 runs channels_last on the CPU, x0.25 not
    baseline = pack_key(RunRequest(cfg(alpha=0.0)), data)
    assert can_pack([a, baseline]) and not can_pack([a, a[:-1] + (12345,)])  # one teacher per group
    with pytest.raises(ValueError, match="cannot share batches"):
        train_group([RunRequest(cfg(), teacher), RunRequest(cfg(seed=1), teacher)], data)
