"""Tests for kdsweep.core.data: both CIFAR layouts, image folders, batched augmentation, the loader."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdsweep.core.data import (
    DATASETS, DeviceLoader, augment, load_dataset, num_views, offsets_to_view, synthetic_imageset, view_to_offsets,
)
from conftest import SUBSET, require_or_skip
from kdsweep.errors import DataError


@pytest.fixture(scope="module")
def subset() -> Path:
    if not (SUBSET / "cifar-10-batches-bin" / "test_batch.bin").is_file():
        # CI (KDSWEEP_REQUIRE_SERVICES=1) has the subset: its absence there is a failure, not a skip
        require_or_skip(f"CIFAR-10 subset not found at {SUBSET}")
    return SUBSET


def _records(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n).astype(np.int64)


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))  # protocol 2 is what the official files use


def test_registered_names() -> None:
    assert {"cifar10", "cifar100", "imagefolder"} <= set(DATASETS.names())


def test_subset_loads_with_official_first_labels(subset: Path) -> None:
    data = load_dataset("cifar10", subset)
    assert (len(data.train_x), len(data.test_x)) == (5085, 1017)
    assert data.train_x.shape[1:] == (3, 32, 32) and data.train_x.dtype == torch.uint8
    # first records of the official data_batch_1 and test_batch
    assert data.train_y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert data.test_y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert data.classes[0] == "airplane" and data.num_classes == 10
    # CIFAR-10's well-known channel means are about (0.49, 0.48, 0.45)
    assert np.allclose(data.mean, (0.491, 0.482, 0.447), atol=0.02)
    assert len(data.identity) == 64


def test_subset_folder_itself_and_limit(subset: Path) -> None:
    data = load_dataset("cifar10", subset / "cifar-10-batches-bin", limit_per_file=10)
    assert (len(data.train_x), len(data.test_x)) == (50, 10)
    full = load_dataset("cifar10", subset)
    # limit keeps the first records of each of the five files
    assert torch.equal(data.train_x[10:20], full.train_x[1017:1027])
    assert data.identity != full.identity


def test_cifar10_pickle_layout(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    written = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = _records(3, 10, seed=i)
        _dump(folder / name, {"data": x, "labels": y.tolist(), "batch_label": name})
        written.append((x, y))
    _dump(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    data = load_dataset("cifar10", tmp_path)
    assert np.array_equal(data.train_x.numpy().reshape(15, -1), np.concatenate([x for x, _ in written[:5]]))
    assert data.train_y.tolist() == np.concatenate([y for _, y in written[:5]]).tolist()
    assert np.array_equal(data.test_x.numpy().reshape(3, -1), written[5][0])
    assert data.classes == tuple(f"c{i}" for i in range(10))


def test_cifar100_pickle_layout(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    (xt, yt), (xs, ys) = _records(6, 100, seed=1), _records(4, 100, seed=2)
    _dump(folder / "train", {"data": xt, "fine_labels": yt.tolist(), "coarse_labels": (yt // 5).tolist()})
    _dump(folder / "test", {"data": xs, "fine_labels": ys.tolist(), "coarse_labels": (ys // 5).tolist()})
    data = load_dataset("cifar100", folder)  # the layout folder itself
    assert np.array_equal(data.train_x.numpy().reshape(6, -1), xt)
    assert data.train_y.tolist() == yt.tolist() and data.test_y.tolist() == ys.tolist()
    assert data.num_classes == 100  # no meta file: numbered names


def test_cifar100_binary_layout_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    (xt, yt), (xs, ys) = _records(5, 100, seed=3), _records(2, 100, seed=4)
    for name, x, y in (("train.bin", xt, yt), ("test.bin", xs, ys)):
        coarse = (y // 5).astype(np.uint8)
        rows = np.concatenate([coarse[:, None], y.astype(np.uint8)[:, None], x], axis=1)
        (folder / name).write_bytes(rows.tobytes())
    data = load_dataset("cifar100", tmp_path)
    assert data.train_y.tolist() == yt.tolist() and data.test_y.tolist() == ys.tolist()
    assert np.array_equal(data.test_x.numpy().reshape(2, -1), xs)


def test_missing_root_names_path_and_command(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError, match="kdsweep data download cifar10") as info:
        load_dataset("cifar10", root)
    assert str(root) in str(info.value) and "\n" not in str(info.value)


def test_truncated_binary_names_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    x, y = _records(2, 10, seed=0)
    good = np.concatenate([y.astype(np.uint8)[:, None], x], axis=1).tobytes()
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(good)
    (folder / "data_batch_3.bin").write_bytes(good[:-7])
    with pytest.raises(DataError, match="data_batch_3.bin"):
        load_dataset("cifar10", tmp_path)


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    # os.system would run on a plain pickle.load; the reader must refuse it
    (folder / "train").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    (folder / "test").write_bytes(b"")
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar100", tmp_path)


def test_imagefolder_mixed_sizes(tmp_path: Path) -> None:
    from PIL import Image

    base = tmp_path / "imagewoof2-160"  # root is its parent, holding a single such folder
    colours = {"n01": (255, 0, 0), "n02": (0, 255, 0), "n03": (0, 0, 255)}
    for split, count in (("train", 4), ("val", 2)):
        for cls, colour in colours.items():
            (base / split / cls).mkdir(parents=True)
            for i in range(count):
                size = (40 + 13 * i, 70 - 9 * i)
                suffix = ".png" if i % 2 else ".JPEG"
                Image.new("RGB", size, colour).save(base / split / cls / f"img{i}{suffix}",
                                                    format="PNG" if i % 2 else "JPEG")
    data = load_dataset("imagefolder", tmp_path, image_size=32)
    assert data.train_x.shape == (12, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    assert data.classes == ("n01", "n02", "n03")
    assert data.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # solid colours survive resize and crop: class 1 is green everywhere (JPEG adds small error)
    green = data.train_x[data.train_y == 1].float().mean((0, 2, 3))
    assert green[1] > 240 and green[0] < 15 and green[2] < 15
    assert load_dataset("imagefolder", base, image_size=32, limit_per_file=1).train_x.shape[0] == 3


def test_imagefolder_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="kdsweep data download imagefolder"):
        load_dataset("imagefolder", tmp_path)


def test_bad_arguments_quote_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'cifar11'"):
        load_dataset("cifar11", tmp_path)
    with pytest.raises(ValueError, match="0"):
        load_dataset("cifar10", tmp_path, limit_per_file=0)


def _reference_augment(x: torch.Tensor, dx: int, dy: int, flip: bool, pad: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    out = F.pad(x, (pad, pad, pad, pad))[:, dy:dy + h, dx:dx + w]
    return out.flip(-1) if flip else out


@pytest.mark.parametrize("pad", [0, 2, 4])
def test_augment_matches_reference_for_every_view(pad: int) -> None:
    views = torch.arange(num_views(pad))
    x = torch.randint(0, 256, (len(views), 3, 8, 10), dtype=torch.uint8)
    dx, dy, flip = view_to_offsets(views, pad)
    out = augment(x, dx, dy, flip, pad)
    for i, v in enumerate(views.tolist()):
        ref = _reference_augment(x[i], *view_to_offsets(v, pad), pad)
        assert torch.equal(out[i], ref), f"view {v}"


def test_view_round_trip() -> None:
    pad = 4
    views = torch.arange(num_views(pad))
    assert torch.equal(offsets_to_view(*view_to_offsets(views, pad), pad), views)
    assert offsets_to_view(*view_to_offsets(77, pad), pad) == 77
    assert view_to_offsets(offsets_to_view(3, 8, True, pad), pad) == (3, 8, True)


def _loader(train: bool, **kw) -> DeviceLoader:
    data = synthetic_imageset(n_train=100, n_test=37, seed=1)
    x, y = (data.train_x, data.train_y) if train else (data.test_x, data.test_y)
    return DeviceLoader(x, y, batch_size=16, device="cpu", mean=data.mean, std=data.std, train=train, **kw)


def test_train_loader_deterministic_per_epoch() -> None:
    loader = _loader(True, seed=3)
    assert len(loader) == 6  # 100 // 16, last partial batch dropped
    a, b, c = (list(loader.epoch(e)) for e in (0, 0, 1))
    assert all(torch.equal(p.x, q.x) and torch.equal(p.view, q.view) for p, q in zip(a, b))
    assert not torch.equal(a[0].index, c[0].index)
    assert all(p.x.shape == (16, 3, 32, 32) and p.x.dtype == torch.float32 for p in a)
    # every yielded image is its source image under the reported view
    p = a[0]
    dx, dy, flip = view_to_offsets(p.view, loader.pad)
    assert torch.equal(p.x, loader.normalise(augment(loader.x[p.index], dx, dy, flip, loader.pad)))
    assert torch.equal(p.y, loader.y[p.index])


def test_eval_loader_covers_split_in_order() -> None:
    loader = _loader(False)
    batches = list(loader.epoch(0))
    assert len(loader) == len(batches) == 3  # 37 images: 16 + 16 + 5
    assert torch.cat([b.index for b in batches]).tolist() == list(range(37))
    assert all(b.view is None for b in batches)
    # no augmentation: the normalised pixels invert back to the stored uint8
    data = synthetic_imageset(n_train=100, n_test=37, seed=1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (data.mean, data.std))
    back = ((torch.cat([b.x for b in batches]) * std + mean) * 255).round().to(torch.uint8)
    assert torch.equal(back, data.test_x)


def test_loader_options() -> None:
    loader = _loader(True, flip=False, pad=0, channels_last=True, dtype=torch.bfloat16)
    batch = next(loader.epoch(0))
    assert batch.x.dtype == torch.bfloat16 and batch.x.is_contiguous(memory_format=torch.channels_last)
    assert batch.view.max() == 0  # pad 0 and no flip: only the identity view
    with pytest.raises(DataError, match="batch_size=512"):
        DeviceLoader(loader.x, loader.y, batch_size=512, device="cpu", mean=(0, 0, 0), std=(1, 1, 1), train=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu() -> None:
    cpu = list(_loader(True, seed=5).epoch(2))
    data = synthetic_imageset(n_train=100, n_test=37, seed=1)
    gpu = DeviceLoader(data.train_x, data.train_y, batch_size=16, device="cuda", mean=data.mean, std=data.std,
                       train=True, seed=5)
    for p, q in zip(cpu, gpu.epoch(2)):
        assert q.x.is_cuda and torch.equal(p.index, q.index.cpu()) and torch.allclose(p.x, q.x.cpu(), atol=1e-5)


def test_synthetic_imageset_shapes() -> None:
    data = synthetic_imageset(n_train=40, n_test=20, num_classes=4, size=16, seed=0)
    assert data.train_x.shape == (40, 3, 16, 16) and data.test_x.shape == (20, 3, 16, 16)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.num_classes == 4 and sorted(set(data.train_y.tolist())) == [0, 1, 2, 3]
    assert synthetic_imageset(seed=0).identity == synthetic_imageset(seed=0).identity
    assert synthetic_imageset(seed=0).identity != synthetic_imageset(seed=1).identity
    # learnable: nearest class-mean on train classifies test far above chance
    centres = torch.stack([data.train_x[data.train_y == k].float().mean(0) for k in range(4)])
    pred = torch.cdist(data.test_x.float().flatten(1), centres.flatten(1)).argmin(1)
    assert (pred == data.test_y).float().mean() > 0.9


def test_cifar_image_size_is_kept_at_32px_and_resized_per_batch(subset: Path) -> None:
    data = load_dataset("cifar10", subset, limit_per_file=8, image_size=64)
    assert data.train_x.shape[-1] == 32 and data.input_size == 64  # memory holds the originals
    assert data.identity != load_dataset("cifar10", subset, limit_per_file=8).identity
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=8, device="cpu", mean=data.mean, std=data.std,
                          train=True, resize=data.input_size)
    batch = next(loader.epoch(0))
    assert batch.x.shape == (8, 3, 64, 64)
    # the same crop and flip as at 32px, then upsampled: a 32px loader's batch resized by hand
    small = DeviceLoader(data.train_x, data.train_y, batch_size=8, device="cpu", mean=data.mean, std=data.std,
                         train=True)
    ref = F.interpolate(next(small.epoch(0)).x, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(batch.x, ref, atol=1e-5)  # normalising is affine, so it commutes with the resize
