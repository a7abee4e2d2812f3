"""Packed runs learn exactly what they learn alone, with one teacher call per batch for the group."""

import dataclasses

import pytest
import torch

from conftest import kd_config
from kdsweep.core.config import TrainConfig
from kdsweep.core.packing import can_pack, pack_key, train_group
from kdsweep.core.teachers import OnlineTeacher
from kdsweep.core.trainer import DivergedError, RunRequest, train


class Counting:
    """An online teacher that counts its calls."""

    def __init__(self, online: OnlineTeacher) -> None:
        self.online, self.calls = online, 0

    def to(self, device, *, channels_last=None, bf16=None):
        self.online.to(device, channels_last=channels_last, bf16=bf16)
        return self

    def for_run(self, data_identity, loader):
        return self

    def compiled(self):
        return self

    def __call__(self, batch):
        self.calls += 1
        return self.online(batch)


def cfg(**kw) -> TrainConfig:
    base = dict(arch="resnet8", width=0.25, epochs=3, batch_size=32, lr=0.05, device="cpu", alpha=0.9)
    return kd_config(**{**base, **kw})


def same_run(a, b) -> None:
    assert [dataclasses.replace(m, epoch_seconds=0, images_per_second=0) for m in a.history] == \
        [dataclasses.replace(m, epoch_seconds=0, images_per_second=0) for m in b.history]
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name


def test_packed_runs_equal_runs_alone_and_share_the_teacher(kd_data, kd_teacher):
    cfgs = [cfg(temperature=2.0), cfg(temperature=6.0, alpha=0.5, lr=0.1), cfg(ema_decay=0.9, lr=0.02),
            cfg(alpha=0.0)]  # a baseline packs with distilled runs of its seed
    counting = Counting(kd_teacher)
    packed = train_group([RunRequest(c, counting if c.distills else None) for c in cfgs], kd_data)
    steps = 3 * (192 // 32)
    assert counting.calls == steps  # one teacher forward per batch for the group, not one per run
    for c, got in zip(cfgs, packed):
        same_run(got, train(c, kd_data, teacher=kd_teacher if c.distills else None))
    assert packed[2].ema_model is not None and packed[2].final.test_acc_ema is not None


def test_a_failing_run_leaves_the_group_and_the_others_go_on(kd_data, kd_teacher):
    class Pruned(Exception):
        pass

    def prune_at_two(m):
        if m.epoch == 2:
            raise Pruned("stop")

    reqs = [RunRequest(cfg(lr=1e6, weight_decay=0.0), kd_teacher),  # diverges in its first epoch
            RunRequest(cfg(temperature=3.0), kd_teacher, on_epoch=prune_at_two),
            RunRequest(cfg(temperature=5.0), kd_teacher)]
    out = train_group(reqs, kd_data)
    assert isinstance(out[0], DivergedError)
    assert isinstance(out[1], Pruned)
    same_run(out[2], train(cfg(temperature=5.0), kd_data, teacher=kd_teacher))


def test_runs_join_at_their_own_epoch_and_end_at_their_own(kd_data, kd_teacher, tmp_path):
    ckpt = tmp_path / "resumed.pt"
    long = cfg(epochs=4, temperature=3.0)

    class Stop(Exception):
        pass

    def stop_after_two(m):
        if m.epoch == 2:
            raise Stop

    with pytest.raises(Stop):  # a run killed after epoch 2 leaves its checkpoint
        train(long, kd_data, teacher=kd_teacher, checkpoint_path=ckpt, on_epoch=stop_after_two)
    short = cfg(epochs=2, temperature=7.0)
    out = train_group([RunRequest(short, kd_teacher), RunRequest(long, kd_teacher, checkpoint_path=ckpt)], kd_data)
    assert [m.epoch for m in out[0].history] == [1, 2]
    assert out[1].resumed_from_epoch == 2 and [m.epoch for m in out[1].history] == [1, 2, 3, 4]
    same_run(out[0], train(short, kd_data, teacher=kd_teacher))
    same_run(out[1], train(long, kd_data, teacher=kd_teacher))


def test_only_runs_that_see_the_same_batches_pack(kd_data, kd_teacher):
    a = pack_key(RunRequest(cfg(), kd_teacher), kd_data)
    assert a == pack_key(RunRequest(cfg(temperature=9.0, lr=0.3, ema_decay=0.5), kd_teacher), kd_data)
    assert a != pack_key(RunRequest(cfg(seed=1), kd_teacher), kd_data)  # another shuffle and augmentation
    assert a != pack_key(RunRequest(cfg(batch_size=16), kd_teacher), kd_data)
    assert a != pack_key(RunRequest(cfg(width=1.0), kd_teacher), kd_data)  # x1 runs channels_last on the CPU, x0.25 not
    baseline = pack_key(RunRequest(cfg(alpha=0.0)), kd_data)
    assert can_pack([a, baseline]) and not can_pack([a, a[:-1] + (12345,)])  # one teacher per group
    with pytest.raises(ValueError, match="cannot share batches"):
        train_group([RunRequest(cfg(), kd_teacher), RunRequest(cfg(seed=1), kd_teacher)], kd_data)
