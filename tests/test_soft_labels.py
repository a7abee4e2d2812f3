"""core/soft_labels.py: FKD's stored crops and top-k teacher probabilities, written once and replayed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdsweep.core.config import TrainConfig
from kdsweep.core.loader import DeviceLoader
from kdsweep.core.methods import LOSSES
from kdsweep.core.models import build_model
from kdsweep.core.soft_labels import (CropRecipe, LabelStore, StoredCropLoader, StoredLabels, apply_crops,
                                      write_store)
from kdsweep.core.trainer import train
from kdsweep.errors import KdsweepError

RECIPE = CropRecipe(crops=3, top_k=2, scale=(0.35, 1.0), seed=5)


class Flaky(torch.nn.Module):
    """A teacher that fails after ``calls`` forwards (a writer stopped mid-way); counts its forwards."""

    def __init__(self, net: torch.nn.Module, calls: int | None) -> None:
        super().__init__()
        self.net, self.calls, self.seen = net, calls, 0

    def forward(self, x):
        if self.calls is not None and self.seen >= self.calls:
            raise RuntimeError("killed")
        self.seen += 1
        return self.net(x)


@pytest.fixture(scope="module")
def teacher(kd_data):
    torch.manual_seed(0)
    return build_model("cnn_student", num_classes=kd_data.num_classes, width=0.5).eval()


@pytest.fixture(scope="module")
def store(kd_data, teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("labels")
    return write_store(teacher, kd_data.train_x, kd_data.mean, kd_data.std, RECIPE, folder,
                       num_classes=kd_data.num_classes, data_identity=kd_data.identity, chunk=64)


def test_store_holds_fp16_top_k_of_the_teacher_on_each_stored_crop(store, kd_data, teacher):
    a = store.arrays
    n = len(kd_data.train_y)
    assert (a["boxes"].dtype, a["flips"].dtype, a["classes"].dtype, a["probs"].dtype) == (
        np.int16, np.uint8, np.int16, np.float16)
    assert a["probs"].shape == (n, 3, 2) and store.complete
    assert store.bytes_per_image == 3 * (4 * 2 + 1 + 2 * 2 + 2 * 2)  # boxes, flip, k classes, k probs
    i, r = 17, 2  # recompute one image's crop and the teacher's top-k on it
    box = torch.from_numpy(a["boxes"][i : i + 1, r].astype(np.int64))
    flip = torch.from_numpy(a["flips"][i : i + 1, r].astype(bool))
    view = apply_crops(kd_data.train_x[i : i + 1], box, flip)
    loader = DeviceLoader(view, torch.zeros(1), batch_size=1, device="cpu", mean=kd_data.mean, std=kd_data.std,
                          train=False)
    with torch.no_grad():
        probs = teacher(loader.normalise(view)).softmax(1)[0]
    top = probs.topk(2)
    assert a["classes"][i, r].tolist() == top.indices.tolist()
    assert np.allclose(a["probs"][i, r].astype(np.float32), top.values.numpy(), atol=1e-3)  # fp16 rounding


def test_a_writer_stopped_mid_way_resumes_at_its_first_unfinished_chunk(kd_data, teacher, store, tmp_path):
    args = (kd_data.train_x, kd_data.mean, kd_data.std, RECIPE, tmp_path)
    kw = dict(num_classes=kd_data.num_classes, data_identity=kd_data.identity, chunk=64)
    with pytest.raises(RuntimeError, match="killed"):  # 192 images in 3 chunks of 3 crops: dies in chunk 2
        write_store(Flaky(teacher, calls=4), *args, **kw)
    assert LabelStore(tmp_path).done == 64
    again = Flaky(teacher, calls=None)
    resumed = write_store(again, *args, **kw)
    assert again.seen == 2 * 3  # the two chunks left, three crops each: chunk 1 was not redone
    for name in ("boxes", "flips", "classes", "probs"):
        assert np.array_equal(resumed.arrays[name], store.arrays[name]), name
    with pytest.raises(KdsweepError, match="other data or another recipe"):
        write_store(teacher, *args[:3], CropRecipe(crops=2, top_k=2), tmp_path, **kw)


def test_each_epoch_replays_one_stored_crop_per_image_drawn_from_seed_and_epoch(store, kd_data):
    base = dict(batch_size=32, device="cpu", mean=kd_data.mean, std=kd_data.std, train=True, seed=3)
    loader = StoredCropLoader(DeviceLoader(kd_data.train_x, kd_data.train_y, **base), store)
    first, again = list(loader.epoch(1)), list(loader.epoch(1))
    assert all(torch.equal(a.x, b.x) and torch.equal(a.view, b.view) for a, b in zip(first, again))
    picks = {int(i): int(v) for b in first for i, v in zip(b.index, b.view)}
    later = {int(i): int(v) for b in loader.epoch(2) for i, v in zip(b.index, b.view)}
    assert set(picks.values()) == {0, 1, 2} and picks != later  # every crop used; another draw next epoch
    shards = [list(StoredCropLoader(DeviceLoader(kd_data.train_x, kd_data.train_y, shard=(r, 2), **base),
                                    store).epoch(1)) for r in (0, 1)]
    for whole, s0, s1 in zip(first, *shards):  # DDP: the processes' halves make up the global batch
        assert torch.equal(torch.cat([s0.x, s1.x]), whole.x)


def test_stored_labels_spread_the_rest_of_the_mass_evenly(store, kd_data):
    source = StoredLabels(store, kd_data.identity)
    base = DeviceLoader(kd_data.train_x, kd_data.train_y, batch_size=16, device="cpu", mean=kd_data.mean,
                        std=kd_data.std, train=True)
    batch = next(StoredCropLoader(base, store).epoch(0))
    p = source(batch).exp()
    assert torch.allclose(p.sum(1), torch.ones(16), atol=1e-3)
    i, v = int(batch.index[0]), int(batch.view[0])
    stored = torch.from_numpy(store.arrays["probs"][i, v].astype(np.float32))
    classes = torch.from_numpy(store.arrays["classes"][i, v].astype(np.int64))
    assert torch.allclose(p[0, classes], stored, atol=1e-6)
    rest = torch.ones(kd_data.num_classes, dtype=torch.bool)
    rest[classes] = False
    assert torch.allclose(p[0, rest], (1 - stored.sum()) / (kd_data.num_classes - 2) * torch.ones(2), atol=1e-6)


def test_methods_that_read_every_logit_are_refused_kd_trains(store, kd_data):
    assert [m for m in ("kd", "dkd", "dist", "lskd") if LOSSES.get(m).top_k_labels] == ["kd"]
    source = StoredLabels(store, kd_data.identity)
    cfg = dict(arch="cnn_student", width=0.25, epochs=1, batch_size=32, lr=0.05)
    with pytest.raises(KdsweepError, match="method 'dkd' reads every teacher logit"):
        train(TrainConfig(**cfg, method="dkd"), kd_data, teacher=source)
    result = train(TrainConfig(**cfg, method="kd"), kd_data, teacher=source)
    assert result.final.loss_terms["kd"] > 0  # learned from the stored labels (no network teacher given)


def test_an_unfinished_store_is_not_read(kd_data, teacher, tmp_path):
    with pytest.raises(RuntimeError):
        write_store(Flaky(teacher, calls=1), kd_data.train_x, kd_data.mean, kd_data.std, RECIPE, tmp_path,
                    num_classes=kd_data.num_classes, chunk=64)
    with pytest.raises(KdsweepError, match="unfinished"):
        StoredLabels(LabelStore(tmp_path), kd_data.identity)


KILLED_WRITER = """
import sys, time, torch
from kdsweep.core.data import synthetic_imageset
from kdsweep.core.models import build_model
from kdsweep.core.soft_labels import CropRecipe, write_store

class Slow(torch.nn.Module):  # a teacher slow enough to be killed mid-store
    def __init__(self, net):
        super().__init__()
        self.net = net
    def forward(self, x):
        time.sleep(float(sys.argv[2]))
        return self.net(x)

data = synthetic_imageset(n_train=192, n_test=64, num_classes=4, size=16, seed=0)
torch.manual_seed(0)
net = build_model("cnn_student", num_classes=4, width=0.5).eval()
write_store(Slow(net), data.train_x, data.mean, data.std, CropRecipe(crops=3, top_k=2, scale=(0.35, 1.0), seed=5),
            sys.argv[1], num_classes=4, data_identity=data.identity, chunk=64)
"""


def test_a_store_writer_killed_by_sigkill_resumes_to_the_same_store(store, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script, folder = tmp_path / "write.py", tmp_path / "labels"
    script.write_text(KILLED_WRITER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(folder), "0.5"], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (folder / "progress.json").exists():  # the first chunk is flushed and counted
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # in chunk 2's teacher forwards
        proc.wait(30)
    finally:
        proc.kill()
    done = LabelStore(folder).done
    assert 64 <= done < 192
    subprocess.run([sys.executable, str(script), str(folder), "0"], env=env, check=True, timeout=120)
    resumed = LabelStore(folder)
    assert resumed.complete
    for name in ("boxes", "flips", "classes", "probs"):  # the same bytes as a store written in one go
        assert np.array_equal(resumed.arrays[name], store.arrays[name]), name


def test_other_processes_get_the_store_by_its_folder_not_its_bytes(store, kd_data):
    import pickle

    source = StoredLabels(store, kd_data.identity)
    blob = pickle.dumps(source)  # what a DDP rank or a loader worker receives
    assert len(blob) < 4096 < sum(a.nbytes for a in store.arrays.values())
    copy = pickle.loads(blob)
    assert copy.store.folder == store.folder and np.array_equal(copy.store.arrays["probs"], store.arrays["probs"])
