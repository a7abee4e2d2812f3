"""load_spec: every problem of a bad spec, one line each, naming the field path and the bad value."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from conftest import write_spec
from kdsweep.errors import SpecError
from kdsweep.study.spec import Choices, Range, load_spec


@pytest.fixture
def good(tmp_path, subset_root) -> dict:
    return yaml.safe_load(write_spec(tmp_path / "good.yaml", subset_root).read_text())


def problems_of(tmp_path: Path, raw: dict, overrides: dict | None = None) -> list[str]:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return info.value.problems


def with_(raw: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


def test_method_params_are_searched_only_for_drawn_methods(tmp_path, good):
    raw = with_(good, "search.dkd", {"beta": {"low": 1.0, "high": 10.0}})
    problems = problems_of(tmp_path, raw)  # dkd is never drawn: kd is the only method
    assert len(problems) == 1 and "search.dkd.beta is searched but no trial uses method 'dkd'" in problems[0]
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(with_(raw, "search.method", {"choices": ["kd", "dkd"]})))
    spec = load_spec(path)
    assert spec.search.methods("kd") == ["kd", "dkd"]
    assert isinstance(spec.search.get("dkd.beta"), Range)


def test_legacy_top_level_kd_keys_still_load_with_a_future_warning(tmp_path, good):
    raw = copy.deepcopy(good)
    raw["student"].pop("kd", None)
    raw["student"].update(temperature=3.0, alpha=0.7)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.warns(FutureWarning, match="student.kd.temperature"):
        spec = load_spec(path)
    assert spec.student.method_params("kd") == {"temperature": 3.0, "alpha": 0.7}


def test_good_spec_loads(tmp_path, good):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(good))
    spec = load_spec(path)
    assert isinstance(spec.search.kd.temperature, Range) and isinstance(spec.search.ema_decay, Choices)


# (field path, bad value[, expected "path=value"]): each alone gives exactly one line naming both
ONE_PROBLEM = [
    ("colour", "red"),  # unknown key
    ("teacher.lrr", 0.1),  # unknown nested key
    ("n_trials", "many"),  # wrong type
    ("n_trials", 0),
    ("student.kd.alpha", 1.5),
    ("student.kd.temperature", 0),
    ("student.recipe.ema_decay", 1.0),
    ("student.recipe.lr", 0),
    ("student.recipe.lr", float("inf")),  # passes "> 0" unless inf is refused
    ("search.kd.alpha", {"low": 0.5, "high": 1.2}),
    ("search.kd.alpha", -0.1),
    ("search.kd.temperature", {"low": 0.0, "high": 4.0}),
    ("search.ema_decay", {"choices": [0.0, 1.0]}),
    ("search.lr", {"low": 0.2, "high": 0.1}),  # low > high
    ("search.kd.alpha", {"choices": []}, "search.kd.alpha.choices=[]"),  # empty choices: the list is named
    ("search.kd.alpha", "high"),
    ("search.dkd.gamma", {"low": 1.0, "high": 2.0}),  # a param the method does not have
    ("search.hinton", {"alpha": 0.5}),  # a method that does not exist
    ("search.method", {"choices": ["kd", "nope"]}),
    ("search.method", {"low": 1.0, "high": 2.0}),
    ("student.method", "hinton"),
    ("student.dkd.beta", -1.0),
    ("student.dkd.gamma", 1.0),
    ("teacher.arch", "resnet9000"),
    ("student.arch", "vgg"),
    ("sampler", "bayes"),
    ("pruner", "asha"),
    ("data.dataset", "mnist"),
    ("data.root", "/no/such/folder"),
    ("seeds", [0, 0]),
    ("device", "gpu"),
    ("storage", "optuna.db"),
    ("tracking_uri", "ftp://example.org"),
]


@pytest.mark.parametrize("case", ONE_PROBLEM, ids=[f"{c[0]}={c[1]!r}" for c in ONE_PROBLEM])
def test_one_bad_value_gives_one_line_naming_field_and_value(tmp_path, good, case):
    field, value = case[:2]
    problems = problems_of(tmp_path, with_(good, field, value))
    assert len(problems) == 1, problems
    line = problems[0]
    assert "\n" not in line
    expected = case[2] if len(case) > 2 else f"{field}={value!r}"
    assert line.startswith(f"{tmp_path / 'spec.yaml'}: {expected}"), line


def test_every_problem_is_reported_not_just_the_first(tmp_path, good):
    raw = with_(good, "sampler", "bayes")
    raw = with_(raw, "pruner", "asha")
    raw = with_(raw, "n_trials", 0)
    raw = with_(raw, "search.kd.alpha", {"low": 0.9, "high": 0.5})
    raw = with_(raw, "teacher.arch", "nope")
    raw = with_(raw, "data.root", "/no/such/folder")  # checked apart from the schema, reported with it
    raw["colour"] = 1
    problems = problems_of(tmp_path, raw)
    fields = sorted(p.split(": ")[1].split("=")[0] for p in problems)
    assert fields == sorted(["sampler", "pruner", "n_trials", "search.kd.alpha", "teacher.arch", "data.root", "colour"])


def test_range_error_is_one_line_about_the_range(tmp_path, good):
    # without picking the union member by shape, pydantic also reports "not choices" and "not a number"
    problems = problems_of(tmp_path, with_(good, "search.lr", {"low": 0.2, "high": 0.1}))
    assert problems == [f"{tmp_path / 'spec.yaml'}: search.lr={{'low': 0.2, 'high': 0.1}}: "
                        "low=0.2 is above high=0.1"]


def test_missing_required_section_is_named(tmp_path, good):
    raw = copy.deepcopy(good)
    del raw["teacher"]
    assert problems_of(tmp_path, raw) == [f"{tmp_path / 'spec.yaml'}: teacher=<missing>: Field required"]


def test_flag_overrides_are_named_as_flags(tmp_path, good):
    problems = problems_of(tmp_path, good, {"device": "tpu", "data_root": "/no/such/folder", "n_trials": None})
    assert len(problems) == 2
    assert any("device='tpu' (from --device)" in p for p in problems)
    assert any("data.root='/no/such/folder' (from --data-root" in p for p in problems)


@pytest.mark.parametrize("content,expected", [
    (b"", "spec is empty"),
    (b"# only a comment\n", "spec is empty"),
    (b"name: [unclosed\n  x: : :\n", "not valid YAML at line 2"),
    (b"- a\n- b\n", "spec must be a mapping of keys, got list"),
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    (b"name: !!python/object/apply:os.system ['true']\n", "not valid YAML"),  # safe_load refuses tags
])
def test_unreadable_files_give_one_line(tmp_path, content, expected):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"{path}: ") and expected in info.value.problems[0]


def test_missing_file_and_folder(tmp_path):
    for path in (tmp_path / "absent.yaml", tmp_path):
        with pytest.raises(SpecError, match="cannot read spec"):
            load_spec(path)


def test_loading_creates_nothing(tmp_path, good, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(good))
    load_spec(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.yaml", "spec.yaml"]


@pytest.mark.parametrize("data, field, words", [
    ({"loader": "stream"}, "data.loader='stream'", "cifar10 is read whole"),
    ({"dataset": "imagefolder", "loader": "resident", "augment": "imagenet"}, "data.augment='imagenet'",
     "random-resized crops need the full images"),
    ({"augment": "imagenet"}, "data.augment='imagenet'", "cifar data uses augment: cifar"),
    ({"memory_budget": "lots"}, "data.memory_budget='lots'", "is not a byte count"),
    ({"workers": -1}, "data.workers=-1", "greater than or equal to 0"),
])
def test_loader_fields_are_checked_naming_field_and_value(tmp_path, good, data, field, words):
    raw = with_(good, "data", {**good["data"], **data})
    (line,) = problems_of(tmp_path, raw)
    assert field in line and words in line, line


def test_memory_budget_with_a_unit_is_read_as_bytes(tmp_path, good):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(with_(good, "data.memory_budget", "512MB")))
    assert load_spec(path).data.memory_budget == 512 * 10**6
