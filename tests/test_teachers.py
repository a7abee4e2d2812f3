"""Teacher sources: the view table returns what the online teacher computes, keyed and cached safely."""

import copy
import dataclasses

import pytest
import torch

from conftest import kd_config
from kdsweep.core.data import DeviceLoader, num_views, synthetic_imageset
from kdsweep.core.models import build_model
from kdsweep.core.precision import teacher_bf16
from kdsweep.core.teachers import (
    OnlineTeacher, TableTeacher, TeacherTable, fold_batchnorm, table_for, table_key, weights_digest,
)
from kdsweep.core.trainer import train
from kdsweep.errors import CheckpointError


@pytest.fixture(scope="module")
def data():
    return synthetic_imageset(n_train=48, n_test=16, num_classes=4, size=16, seed=3)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    net = build_model("resnet8", num_classes=4, width=0.5)
    # a few steps of BN statistics so eval-mode BN is not the identity (folding must handle it)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 3, 16, 16) * 2 + 0.5)
    return OnlineTeacher(net.eval())


@pytest.fixture(scope="module")
def table(teacher, data):
    return table_for(teacher, data, device="cpu", bf16=False, channels_last=True)


def _train_loader(data, seed=0, pad=4):
    return DeviceLoader(data.train_x, data.train_y, batch_size=16, device="cpu", mean=data.mean, std=data.std,
                        train=True, seed=seed, pad=pad, channels_last=True)


def test_table_covers_every_view_of_every_image(table, data):
    assert table.logits.shape == (48, num_views(4), 4) == (48, 162, 4)
    assert torch.isfinite(table.logits).all()


def test_looked_up_logits_equal_recomputed_ones(table, teacher, data):
    source = TableTeacher(table, teacher)
    loader = _train_loader(data, seed=7)
    assert source.for_run(data.identity, loader) is source
    checked = 0
    for epoch in range(2):
        for batch in loader.epoch(epoch):
            looked_up = source(batch)
            recomputed = teacher(batch)  # the online teacher on the very tensor the student sees
            torch.testing.assert_close(looked_up, recomputed, rtol=1e-5, atol=1e-5)
            checked += len(batch.y)
            # the lookup must depend on the view: a neighbouring view gives other logits
            other = table.lookup(batch.index, (batch.view + 2) % num_views(4))
            assert (other - recomputed).abs().max() > 1e-3
    assert checked == 2 * 48


def test_table_key_follows_weights_data_pad_and_precision(teacher, data):
    def key(model=teacher.model, ident=data.identity, pad=4, precision="fp32"):
        return table_key(model, ident, pad=pad, mean=data.mean, std=data.std, precision=precision)

    changed = copy.deepcopy(teacher.model)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert key() == key()
    assert len({key(), key(model=changed), key(ident="other"), key(pad=2), key(precision="bf16")}) == 5
    assert weights_digest(teacher.model) == weights_digest(copy.deepcopy(teacher.model))


def test_table_cache_is_reused_and_keyed(teacher, tmp_path):
    data = synthetic_imageset(n_train=6, n_test=2, num_classes=4, size=16, seed=4)
    first = table_for(teacher, data, device="cpu", bf16=False, cache_dir=tmp_path)
    files = list(tmp_path.glob("teacher-table-*.pt"))
    assert len(files) == 1 and first.key in files[0].name
    # mark the saved table: what the next call returns must be the file's content, and the
    # teacher must not run (recomputing would give the unmarked logits)
    TeacherTable(first.logits + 100.0, first.pad, first.key, first.data_identity).save(files[0])
    forwards = []
    hook = teacher.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        again = table_for(teacher, data, device="cpu", bf16=False, cache_dir=tmp_path)
    finally:
        hook.remove()
    assert forwards == [] and torch.equal(again.logits, first.logits + 100.0)
    # the same images under another data identity are another key: computed afresh (the unmarked
    # logits), in a second file
    other = dataclasses.replace(data, identity="another data set")
    fresh = table_for(teacher, other, device="cpu", bf16=False, cache_dir=tmp_path)
    assert fresh.key != first.key and len(list(tmp_path.glob("teacher-table-*.pt"))) == 2
    assert torch.equal(fresh.logits, first.logits)
    with pytest.raises(CheckpointError, match="not 'someotherkey'"):
        TeacherTable.load(files[0], key="someotherkey")


def test_batches_outside_the_table_go_to_the_online_teacher(table, teacher, data):
    source = TableTeacher(table, teacher)
    assert source.for_run(data.identity, _train_loader(data, pad=0)) is teacher  # augmentation off
    assert source.for_run("another data set", _train_loader(data)) is teacher
    test_loader = DeviceLoader(data.test_x, data.test_y, batch_size=8, device="cpu", mean=data.mean, std=data.std,
                               train=False)
    batch = next(test_loader.epoch(0))
    torch.testing.assert_close(source(batch), teacher(batch))  # no view: computed online


def test_training_with_the_table_matches_training_with_the_online_teacher(table, teacher, data):
    cfg = kd_config(arch="resnet8", width=0.25, epochs=2, batch_size=16, lr=0.05, alpha=0.9, temperature=4.0,
                      device="cpu", precision="fp32")  # the table fixture is fp32
    online = train(cfg, data, teacher=teacher)
    looked_up = train(cfg, data, teacher=TableTeacher(table, teacher))
    for a, b in zip(online.history, looked_up.history):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)


def test_folding_batchnorm_keeps_the_function(teacher):
    x = torch.randn(8, 3, 16, 16)
    folded = fold_batchnorm(teacher.model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), teacher.model(x), rtol=1e-4, atol=1e-5)


def test_a_bf16_teacher_is_close_to_fp32_and_its_table_matches_it(teacher, data):
    low = OnlineTeacher(copy.deepcopy(teacher.model)).to("cpu", bf16=True)
    batch = next(_train_loader(data, seed=2).epoch(0))
    out = low(batch)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), teacher(batch), rtol=0.05, atol=0.05)  # bf16: ~3 significant digits
    table = table_for(low, data, device="cpu", bf16=True, channels_last=True)
    assert table.logits.dtype == torch.bfloat16
    source = TableTeacher(table, low)
    assert source.for_run(data.identity, _train_loader(data)) is source
    torch.testing.assert_close(source(batch), out, rtol=1e-2, atol=1e-2)


def test_a_table_of_another_precision_is_left_to_the_online_teacher(table, teacher, data):
    other = OnlineTeacher(copy.deepcopy(teacher.model)).to("cpu", bf16=True)
    source = TableTeacher(table, other)  # an fp32 table in front of a bf16 teacher
    assert source.for_run(data.identity, _train_loader(data)) is other


def test_the_trainer_gives_the_teacher_its_precision(teacher, data):
    own = OnlineTeacher(copy.deepcopy(teacher.model))
    cfg = kd_config(arch="resnet8", width=0.25, epochs=1, batch_size=16, alpha=0.9, device="cpu")
    for precision in ("fp32", "bf16", "auto"):
        train(dataclasses.replace(cfg, precision=precision), data, teacher=own)
        assert own.bf16 == teacher_bf16(precision, torch.device("cpu")), precision
