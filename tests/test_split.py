"""The validation split: stratified, fixed by the training data and split_seed, never by the test split."""

import dataclasses

import pytest
import torch

from kdsweep.core.data import synthetic_imageset
from kdsweep.core.split import hold_out, val_count
from kdsweep.errors import DataError


@pytest.fixture(scope="module")
def data():
    return synthetic_imageset(n_train=400, n_test=80, num_classes=4, size=8, seed=0)


def test_fraction_and_count(data):
    assert val_count(400, 0.1) == 40 and val_count(400, 25) == 25 and val_count(400, 0) == 0
    split = hold_out(data, 0.1, seed=0)
    assert len(split.val_y) == 40 and len(split.train_y) == 360
    assert hold_out(data, 0, seed=0) is data  # nothing held out: the data as it was


def test_stratified_by_class(data):
    split = hold_out(data, 0.2, seed=3)
    for c in range(4):
        share = (split.val_y == c).sum().item() / (data.train_y == c).sum().item()
        assert share == pytest.approx(0.2, abs=0.02), c


def test_held_out_images_are_not_trained_on_and_nothing_is_lost(data):
    split = hold_out(data, 0.25, seed=1)
    key = lambda x: {bytes(img.numpy().tobytes()) for img in x}  # noqa: E731
    train, val, whole = key(split.train_x), key(split.val_x), key(data.train_x)
    assert not train & val and train | val == whole
    assert torch.equal(split.test_y, data.test_y)


def test_fixed_by_the_training_data_and_seed_not_by_the_test_split(data):
    a = hold_out(data, 0.1, seed=0)
    assert a.val_digest == hold_out(data, 0.1, seed=0).val_digest
    assert a.val_digest != hold_out(data, 0.1, seed=1).val_digest
    wrong_test = dataclasses.replace(data, test_y=data.test_y.flip(0), identity="other")
    b = hold_out(wrong_test, 0.1, seed=0)
    assert b.val_digest == a.val_digest and torch.equal(b.val_x, a.val_x)


def test_identity_and_statistics_follow_the_split(data):
    split = hold_out(data, 0.1, seed=0)
    assert split.identity != data.identity  # caches keyed by it never mix splits
    assert split.mean != data.mean  # normalised by what is trained on
    # ... exactly: the per-channel statistics of the images left to train on (a population std),
    # computed here with torch's own reductions
    pixels = split.train_x.double().div(255).permute(1, 0, 2, 3).flatten(1)
    assert split.mean == pytest.approx(pixels.mean(1).tolist(), abs=1e-9)
    assert split.std == pytest.approx(pixels.std(1, correction=0).tolist(), abs=1e-9)


def test_holding_out_everything_is_refused(data):
    with pytest.raises(DataError, match="none left to train on"):
        hold_out(data, 400, seed=0)
