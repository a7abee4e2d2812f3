"""Reading a study: ``load_spec`` is the only place YAML is read (the schema is ``study/schema.py``).

Everything is checked here, once, so a typo fails before any study, run or file is created.
Relative paths (data root, SQLite files) are relative to the directory kdsweep is run from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdsweep.errors import SpecError
from kdsweep.study.schema import _UNION_TAGS, DataSpec, StudySpec
from kdsweep.study.schema import Choices, Param, Range  # noqa: F401  (re-exported: the study's modules read them here)

# CLI flags that override spec fields: named in messages so a bad flag is not blamed on the file
FLAG_FIELDS = {"data_root": ("data.root", "--data-root or $KDSWEEP_DATA_ROOT"), "n_trials": ("n_trials", "--n-trials"),
               "storage": ("storage", "--storage"), "tracking_uri": ("tracking_uri", "--tracking-uri"),
               "device": ("device", "--device"), "jobs": ("jobs", "--jobs")}


def _flatten(loc: tuple[Any, ...]) -> str:
    # pydantic puts union tags ('Range') and validator names into the location: drop them
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or p.startswith("function-")))]
    return ".".join(parts) or "<spec>"


def format_errors(source: str, err: ValidationError, flags: dict[str, str] | None = None) -> list[str]:
    """One line per problem: ``file: field=value: message``; one line per field for unions.

    ``flags`` maps a field path to the CLI flag that set it, named in that field's line.
    """
    lines: dict[str, str] = {}
    for e in err.errors():
        field = _flatten(e["loc"])
        value = e.get("input")
        shown = "<missing>" if e["type"] == "missing" else repr(value)
        msg = e["msg"].removeprefix("Value error, ")
        origin = f" (from {flags[field]})" if flags and field in flags else ""
        if field == "<spec>":  # a check across fields: its message names them; the whole input would be noise
            lines.setdefault(msg, f"{source}: {msg}")
            continue
        lines.setdefault(field, f"{source}: {field}={shown}{origin}: {msg}")
    return list(lines.values())


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"{path}: cannot read spec: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([f"{path}: cannot read spec: not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                         f"at offset {exc.start})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError([f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"]) from None
    if raw is None:
        raise SpecError([f"{path}: spec is empty"])
    if not isinstance(raw, dict):
        raise SpecError([f"{path}: spec must be a mapping of keys, got {type(raw).__name__}"])
    return raw


def parse_set(items: tuple[str, ...] | list[str]) -> list[tuple[str, Any]]:
    """``--set KEY.PATH=VALUE`` items as (path, value); VALUE is read as YAML (``0.25``, ``[0, 1]``, ``true``)."""
    pairs, problems = [], []
    for item in items:
        path, sep, text = item.partition("=")
        parts = path.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            problems.append(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set student.recipe.epochs=2")
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            problems.append(f"--set {item!r}: the value is not valid YAML")
            continue
        pairs.append((".".join(p.strip() for p in parts), value))
    if problems:
        raise SpecError(problems)
    return pairs


def _set_path(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    out = dict(raw)
    if not rest:
        out[head] = value
        return out
    inner = out.get(head)
    if inner is None:
        inner = {}
    if not isinstance(inner, dict):
        raise SpecError([f"--set {path}={value!r}: {head} is {inner!r}, not a mapping of keys"])
    out[head] = _set_path(inner, rest, value)
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """CLI flags win over the spec. Keys: data_root, n_trials, storage, tracking_uri, device, jobs, set.

    ``set`` holds ``KEY.PATH=VALUE`` strings applied first, so the named flags win over them.
    """
    out = dict(raw)
    for path, value in parse_set(overrides.get("set") or ()):
        out = _set_path(out, path, value)
    for key, value in overrides.items():
        if value is None or key == "set":
            continue
        if key == "data_root":
            out["data"] = {**(out.get("data") or {}), "root": value}
        else:
            out[key] = value
    return out


def _data_root_problem(source: str, raw: dict[str, Any], flags: dict[str, str]) -> str | None:
    """The data root, checked from the raw input so it is reported beside every other problem."""
    data = raw.get("data", {})
    if not isinstance(data, dict):
        return None
    root, dataset = data.get("root", DataSpec().root), data.get("dataset", DataSpec().dataset)
    if not isinstance(root, (str, Path)) or Path(root).exists():
        return None
    origin = f" (from {flags['data.root']})" if "data.root" in flags else ""
    return (f"{source}: data.root={str(root)!r}{origin}: folder does not exist "
            f"(download with: kdsweep data download {dataset} --root {root})")


def load_spec(path: Path, overrides: dict[str, Any] | None = None, *, check_data: bool = True) -> StudySpec:
    """Read, override and validate a study spec; raise SpecError listing every problem.

    Nothing is created here (no folder, database or run), so a bad spec leaves no trace.
    """
    overrides = overrides or {}
    raw = apply_overrides(read_yaml(path), overrides)
    flags = {path: "--set" for path, _ in parse_set(overrides.get("set") or ())}
    flags.update(FLAG_FIELDS[k] for k, v in overrides.items() if v is not None and k in FLAG_FIELDS)
    problems: list[str] = []
    spec = None
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        problems += format_errors(str(path), exc, flags)
    if check_data and not any(p.startswith(f"{path}: data.root=") for p in problems):
        problem = _data_root_problem(str(path), raw, flags)
        if problem:
            problems.append(problem)
    if problems or spec is None:
        raise SpecError(problems)
    return spec
