"""Non-finite numbers (``.nan``, ``.inf``, ``-.inf``) are refused in every numeric field of the schema.

The fields are found by walking ``StudySpec``'s annotations, so a field added later is covered
without an edit here: every int and float, every Range bound, every choices list, every method
param (fixed under ``student.<method>`` and searched under ``search.<method>``).
"""

from __future__ import annotations

import types
import typing

import pydantic
import pytest

from kdsweep.errors import SpecError
from kdsweep.study.schema import Choices, Range, StudySpec
from kdsweep.study.spec import load_spec

NON_FINITE = [".nan", ".inf", "-.inf", ".NaN", "+.Inf"]
# every method is drawn, so a searched method param is not refused for being unused instead
BASE = "name: x\nteacher: {arch: resnet8}\nstudent: {arch: resnet8}\nsearch: {method: {choices: [kd, dkd, dist, lskd]}}\n"


def _paths(tp: typing.Any, path: str) -> list[str]:
    """The dotted paths of the numbers under a field of type ``tp`` (a list's first item as ``.0``)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _paths(typing.get_args(tp)[0], path)
    if origin in (typing.Union, types.UnionType):
        return list(dict.fromkeys(p for arg in typing.get_args(tp) for p in _paths(arg, path)))
    if origin is list:
        return [f"{p}.0" for p in _paths(typing.get_args(tp)[0], path)]
    if tp is Range:
        return [f"{path}.low", f"{path}.high", f"{path}.step"]
    if tp is Choices:
        return [f"{path}.choices.0"]
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return [p for name, f in tp.model_fields.items() for p in _paths(f.annotation, f"{path}.{name}".lstrip("."))]
    return [path] if tp in (int, float) else []


PATHS = _paths(StudySpec, "")


def _setting(path: str, text: str) -> str:
    """``--set`` text putting ``text`` at ``path``, with the rest of a Range or list filled in validly."""
    parent, _, leaf = path.rpartition(".")
    if leaf in ("low", "high", "step"):
        bounds = {"low": "0.5", "high": "0.6", leaf: text}
        return f"{parent}={{{', '.join(f'{k}: {v}' for k, v in bounds.items())}}}"
    if leaf == "0":
        return f"{parent}=[{text}]"
    return f"{path}={text}"


def test_the_walk_finds_the_numeric_fields():
    # a walk that found nothing would make the test below vacuous
    for path in ("seeds.0", "timeout", "data.val_split", "student.recipe.lr", "student.kd.alpha",
                 "student.dkd.warmup", "search.lr.low", "search.kd.temperature.step", "search.width.choices.0",
                 "confirm.seeds.0", "jobs"):
        assert path in PATHS, path
    assert len(PATHS) > 80


@pytest.mark.parametrize("text", NON_FINITE)
def test_every_numeric_field_refuses_non_finite_numbers(tmp_path, text):
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE)
    load_spec(spec, {"data_root": str(tmp_path)})  # the base is valid: a refusal below is the value's
    accepted, unnamed = [], []
    for path in PATHS:
        setting = _setting(path, text)
        try:
            load_spec(spec, {"set": [setting], "data_root": str(tmp_path)})
        except SpecError as exc:
            # the line names the field (a list or range by its own path) and why
            field = path.removesuffix(".0").rsplit(".", 1)[0] if path.endswith((".low", ".high", ".step", ".0")) \
                else path
            if not any(f": {field}" in line and ("finite" in line or "not a number" in line or "integer" in line)
                       for line in exc.problems):
                unnamed.append(f"{setting}: {exc.problems}")
        else:
            accepted.append(setting)
    assert not accepted, f"accepted: {accepted}"
    assert not unnamed, "\n".join(unnamed)


def test_a_fixed_method_param_a_search_range_overrides_is_still_checked(tmp_path):
    # the trials draw kd.alpha from the range, but baselines, confirmation and the report read the
    # fixed value: .nan there would slip into them
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nteacher: {arch: resnet8}\nstudent: {arch: resnet8, kd: {alpha: .nan}}\n"
                    "search: {kd: {alpha: {low: 0.1, high: 0.9}}}\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec, {"data_root": str(tmp_path)})
    assert err.value.problems == [f"{spec}: student.kd.alpha=nan: Input should be a finite number"]
