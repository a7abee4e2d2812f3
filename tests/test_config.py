"""TrainConfig: range checks and the fingerprint that keys teacher/baseline reuse."""

import dataclasses

import pytest

from kdsweep.core.config import TrainConfig


def test_fingerprint_changes_with_recipe_and_data_but_not_device():
    a = TrainConfig(arch="resnet20")
    assert a.fingerprint(data_identity="d1") == dataclasses.replace(a, device="cuda").fingerprint(data_identity="d1")
    assert a.fingerprint(data_identity="d1") != dataclasses.replace(a, epochs=31).fingerprint(data_identity="d1")
    assert a.fingerprint(data_identity="d1") != dataclasses.replace(a, lr=0.05).fingerprint(data_identity="d1")
    assert a.fingerprint(data_identity="d1") != a.fingerprint(data_identity="d2")


@pytest.mark.parametrize("field, value", [("alpha", 1.2), ("temperature", 0.0), ("ema_decay", 1.0),
                                          ("lr", 0.0), ("width", -1.0), ("epochs", 0)])
def test_out_of_range_values_are_named(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        TrainConfig(arch="resnet20", **{field: value})


def test_distills_only_with_positive_alpha():
    assert not TrainConfig(arch="resnet8").distills
    assert TrainConfig(arch="resnet8", alpha=0.1).distills
