"""TrainConfig: range checks, the method and its params, and the fingerprint that keys teacher/baseline reuse."""

import dataclasses

import pytest

from kdsweep.core.config import TrainConfig


def test_fingerprint_changes_with_recipe_and_data_but_not_device():
    a = TrainConfig(arch="resnet20")
    assert a.fingerprint(data_identity="d1") == dataclasses.replace(a, device="cuda").fingerprint(data_identity="d1")
    assert a.fingerprint(data_identity="d1") != dataclasses.replace(a, epochs=31).fingerprint(data_identity="d1")
    assert a.fingerprint(data_identity="d1") != dataclasses.replace(a, lr=0.05).fingerprint(data_identity="d1")
    assert a.fingerprint(data_identity="d1") != a.fingerprint(data_identity="d2")
    kd = TrainConfig(arch="resnet20", method="kd", method_params={"temperature": 2.0})
    assert kd.fingerprint(data_identity="d1") != dataclasses.replace(
        kd, method_params={"temperature": 3.0}).fingerprint(data_identity="d1")


@pytest.mark.parametrize("field, value", [("ema_decay", 1.0), ("lr", 0.0), ("width", -1.0), ("epochs", 0)])
def test_out_of_range_values_are_named(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        TrainConfig(arch="resnet20", **{field: value})


@pytest.mark.parametrize("params, match", [({"alpha": 1.2}, r"kd.alpha=1.2: must lie in \[0, 1\]"),
                                           ({"temperature": 0.0}, r"kd.temperature=0.0: must be > 0"),
                                           ({"beta": 8.0}, "method 'kd' has no param 'beta'")])
def test_method_params_are_checked_against_the_method(params, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(arch="resnet20", method="kd", method_params=params)


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown KD method 'hinton'"):
        TrainConfig(arch="resnet20", method="hinton")


def test_params_are_resolved_and_logged_under_the_method():
    cfg = TrainConfig(arch="resnet8", method="kd", method_params={"temperature": 2.0})
    assert cfg.method_params == {"alpha": 0.9, "temperature": 2.0}  # the default filled in
    params = cfg.as_params()
    assert params["method"] == "kd" and params["kd.alpha"] == 0.9 and params["kd.temperature"] == 2.0
    assert "method_params" not in params


def test_distills_when_the_method_needs_a_teacher():
    assert not TrainConfig(arch="resnet8").distills  # ce, the default
    assert TrainConfig(arch="resnet8", method="kd").distills
