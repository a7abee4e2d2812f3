"""The spec's model fields (study/model_fields.py): arch_args, width and weights files, each refused in one line."""

from __future__ import annotations

import datetime

import pytest
from pydantic import ValidationError

from kdsweep.study.schema import StudentSpec, TeacherSpec


@pytest.mark.parametrize("args,message", [
    ({"num_classes": 10}, "num_classes comes from the data"),
    ({"drop-rate": 0.1}, "key 'drop-rate' is not a keyword argument name"),
    ({"when": datetime.date(2026, 1, 1)}, "values must be plain numbers, strings, booleans, lists or mappings"),
])
def test_arch_args_that_cannot_be_keyword_arguments_are_refused(args, message):
    with pytest.raises(ValidationError, match=message) as err:
        StudentSpec(arch="timm:resnet10t", arch_args=args)
    assert err.value.error_count() == 1


def test_plain_arch_args_pass_and_a_builtin_still_scales():
    assert StudentSpec(arch="timm:resnet10t", arch_args={"drop_path_rate": 0.1, "act": [1, "x"]}).arch_args
    assert StudentSpec(arch="resnet8", width=0.5).width == 0.5


def test_teacher_takes_checkpoint_or_init_not_both(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    with pytest.raises(ValidationError, match="give one of the two"):
        TeacherSpec(arch="resnet8", checkpoint=weights, init=weights)
    with pytest.raises(ValidationError, match="init file does not exist"):
        TeacherSpec(arch="resnet8", init=tmp_path / "absent.pt")
    with pytest.raises(ValidationError, match="drop init or use mode: pretrained"):
        TeacherSpec(arch="resnet8", init=weights, mode="online")
