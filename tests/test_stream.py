"""The stream loader (core/stream.py): batches fixed by (seed, epoch) whatever the workers, the
torchvision recipes, the resident loader's crop for a view id, corrupt images counted and capped."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from photo_layouts import write_jpeg_folder

from kdsweep.core.config import TrainConfig
from kdsweep.core.formats import list_dataset
from kdsweep.core.lazyset import StreamOptions
from kdsweep.core.loader import augment, view_to_offsets
from kdsweep.core.stream import PAD, StreamLoader, decode, fit, random_resized_crop_params
from kdsweep.core.trainer import train
from kdsweep.errors import DataError

SIZE = 24


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_jpeg_folder(tmp_path_factory.mktemp("photos"), classes=3, per_class=8, val_per_class=2)


def lazy(folder: Path, recipe: str = "imagenet", workers: int = 0, **kw):
    return list_dataset("imagefolder", folder, options=StreamOptions(augment=recipe, image_size=SIZE, workers=workers,
                                                                     **kw))


def loader(data, *, train: bool = True, seed: int = 0, batch_size: int = 8) -> StreamLoader:
    return StreamLoader(data.train, data.options, batch_size=batch_size, device="cpu", mean=data.mean, std=data.std,
                        train=train, seed=seed)


def epoch(ld: StreamLoader, e: int) -> list:
    return list(ld.epoch(e))


@pytest.mark.parametrize("recipe", ["imagenet", "cifar"])
def test_same_seed_and_epoch_give_the_same_batches_with_any_worker_count(folder, recipe):
    # a resumed run must see the batches it would have seen, whichever worker made each image
    one = epoch(loader(lazy(folder, recipe, workers=0)), 3)
    two = epoch(loader(lazy(folder, recipe, workers=2)), 3)
    assert len(one) == 3  # 24 training images, batch 8
    for a, b in zip(one, two):
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index) and torch.equal(a.crop, b.crop)


def test_epochs_and_seeds_draw_other_orders_and_crops(folder):
    data = lazy(folder)
    e0, e1 = epoch(loader(data), 0), epoch(loader(data), 1)
    other_seed = epoch(loader(data, seed=1), 0)
    assert not torch.equal(e0[0].index, e1[0].index)
    assert not torch.equal(e0[0].index, other_seed[0].index)
    crops = {i: c for b in e0 for i, c in zip(b.index.tolist(), b.crop.tolist())}
    crops1 = {i: c for b in e1 for i, c in zip(b.index.tolist(), b.crop.tolist())}
    assert sum(crops[i] != crops1[i] for i in crops) > len(crops) // 2  # an image's crop changes with the epoch


def test_imagenet_training_crop_is_a_random_resized_crop_of_the_source(folder):
    data = lazy(folder)
    for b in epoch(loader(data), 0):
        assert b.x.shape == (8, 3, SIZE, SIZE) and b.view is None
        for i, (top, left, h, w, flip) in zip(b.index.tolist(), b.crop.tolist()):
            img = decode(data.train.read(i))
            H, W = img.shape[1:]
            assert 0 <= top and top + h <= H and 0 <= left and left + w <= W
            # torchvision's fallback is a centre crop of the whole image; otherwise scale 0.08..1, ratio 3/4..4/3
            assert 0.08 * H * W * 0.8 <= h * w <= H * W
            expected = v2.functional.resized_crop(img, top, left, h, w, [SIZE, SIZE], antialias=True)
            if flip:
                expected = v2.functional.horizontal_flip(expected)
            assert torch.equal(loader(data).normalise(expected[None])[0], b.x[list(b.index.tolist()).index(i)])


def test_random_resized_crop_params_follow_torchvisions_bounds():
    g = torch.Generator().manual_seed(0)
    areas, ratios = [], []
    for _ in range(400):
        top, left, h, w = random_resized_crop_params(300, 400, g)
        assert 0 <= top <= 300 - h and 0 <= left <= 400 - w
        areas.append(h * w / 120000)
        ratios.append(w / h)
    assert 0.07 < min(areas) < 0.2 and max(areas) > 0.8
    assert min(ratios) > 0.7 and max(ratios) < 1.4 and min(ratios) < 0.85 and max(ratios) > 1.2


def test_imagenet_evaluation_is_resize_then_centre_crop(folder):
    data = lazy(folder)
    b = epoch(loader(data, train=False), 0)[0]
    img = decode(data.train.read(0))
    reference = v2.Compose([v2.Resize(round(SIZE / 0.875), antialias=True), v2.CenterCrop(SIZE)])(img)
    assert torch.equal(b.x[0], loader(data).normalise(reference[None])[0]) and b.crop is None


def test_cifar_view_id_is_the_resident_loaders_crop_and_flip(folder):
    data = lazy(folder, "cifar")
    b = epoch(loader(data), 0)[0]
    assert b.view is not None and int(b.view.max()) < (2 * PAD + 1) ** 2 * 2
    for k, i in enumerate(b.index.tolist()):
        dx, dy, flip = view_to_offsets(b.view[k:k + 1], PAD)
        fitted = fit(decode(data.train.read(i)), SIZE)[None]
        assert torch.equal(loader(data).normalise(augment(fitted, dx, dy, flip, PAD))[0], b.x[k])


def _copy(folder: Path, tmp: Path) -> Path:
    import shutil

    copy = tmp / "photos"
    shutil.copytree(folder, copy)
    return copy


def test_a_corrupt_image_met_mid_epoch_is_skipped_and_counted_with_a_warning(folder, tmp_path):
    copy = _copy(folder, tmp_path)
    data = lazy(copy, max_bad_images=1)  # listed while intact; corrupted before the epoch
    victim = copy / data.train.keys[5]
    victim.write_bytes(b"not a jpeg at all" * 10)
    ld = loader(data)
    with pytest.warns(RuntimeWarning, match=f"{victim}: unreadable image"):
        batches = epoch(ld, 0)
    assert ld.bad_images == 1
    assert sum(len(b.y) for b in batches) == 23 and 5 not in torch.cat([b.index for b in batches]).tolist()


def test_more_corrupt_images_than_max_bad_images_stops_the_run(folder, tmp_path):
    copy = _copy(folder, tmp_path)
    data = lazy(copy, max_bad_images=1)
    for k in (2, 9):
        (copy / data.train.keys[k]).write_bytes(b"\xff\xd8 truncated")
    cfg = TrainConfig(arch="resnet8", width=0.25, epochs=1, batch_size=8)
    with pytest.warns(RuntimeWarning), pytest.raises(DataError, match="2 corrupt images met, more than data.max_bad_images=1"):
        train(cfg, data)


def test_training_on_the_stream_loader_learns_and_reports_each_epoch(folder):
    data = lazy(folder, "cifar")
    result = train(TrainConfig(arch="resnet8", width=0.25, epochs=2, batch_size=8, lr=0.05), data)
    assert [m.epoch for m in result.history] == [1, 2]
    assert all(math.isfinite(m.train_loss) for m in result.history)
    assert result.history[-1].train_loss < result.history[0].train_loss * 1.5  # trains, does not blow up


def test_evaluate_split_on_streamed_data_counts_each_split(folder):
    # a model that always says class 0 is right on exactly the class-0 images of each split
    from torch import nn

    from kdsweep.core.split import hold_out
    from kdsweep.core.trainer import evaluate_split

    class Zero(nn.Module):
        def forward(self, x):
            return torch.tensor([1.0, 0.0, 0.0]).expand(len(x), 3)

    data = hold_out(lazy(folder), 6)
    train_acc, test_acc, val_acc = evaluate_split(Zero(), data)
    expected = [float((y == 0).float().mean()) for y in (data.train_y, data.test_y, data.val_y)]
    assert [train_acc, test_acc, val_acc] == pytest.approx(expected)
