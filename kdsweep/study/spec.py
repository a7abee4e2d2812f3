"""Reading a study: ``load_spec`` is the only place YAML is read (the schema is ``study/schema.py``).

Everything is checked here, once, so a typo fails before any study, run or file is created.
Relative paths (data root, SQLite files) are relative to the directory kdsweep is run from.
"""

from __future__ import annotations

import re
import reprlib
from itertools import islice
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from pydantic import ValidationError

from kdsweep.errors import SpecError
from kdsweep.study.schema import _UNION_TAGS, DataSpec, StudySpec
from kdsweep.study.schema import Choices, Param, Range  # noqa: F401  (re-exported: the study's modules read them here)

# CLI flags that override spec fields: named in messages so a bad flag is not blamed on the file
FLAG_FIELDS = {"data_root": ("data.root", "--data-root or $KDSWEEP_DATA_ROOT"), "n_trials": ("n_trials", "--n-trials"),
               "storage": ("storage", "--storage"), "tracking_uri": ("tracking_uri", "--tracking-uri"),
               "device": ("device", "--device"), "jobs": ("jobs", "--jobs"),
               "processes": ("processes", "--processes")}


# Bounds on what a spec can make kdsweep read, build or print: a real spec is a few kB and a few
# hundred YAML nodes, so these refuse only the pathological (an alias bomb, a 100 MB string)
MAX_SPEC_BYTES = 256 * 1024  # the pure-Python YAML reader takes up to ~0.5 s for this much
MAX_YAML_NODES = 3_000  # values after alias expansion: `*a` counts every node under `&a` again
MAX_YAML_DEPTH = 50
MAX_INT = 2**63  # no field takes more, and Python refuses to print ints past 4,300 digits
MAX_SHOWN = 200  # characters of a quoted value in a message
MAX_PROBLEMS = 20  # lines of one SpecError; the rest are counted

# scheme://user:PASSWORD@ (an optional "+driver"); in a cut text, also a password the cut has run into
_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31}://[^/@\s:]*):[^/@\s]*@")
_PASSWORD_CUT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31}://[^/@\s:]*):[^/@\s]*(@|$)")


def mask_url(text: str, *, was_cut: bool = False) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db`` (anywhere in ``text``)."""
    if "://" not in text:
        return text
    return _PASSWORD_CUT.sub(r"\1:***\2", text) if was_cut else _PASSWORD.sub(r"\1:***@", text)


class _ShortRepr(reprlib.Repr):
    """``repr`` that stops early: a few items per level, a few levels, strings cut and masked."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, 60, 60, 40
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 8

    def repr_str(self, x: str, level: int) -> str:
        return shown(x, self.maxstring)

    def repr_dict(self, x: dict, level: int) -> str:  # in the file's order (reprlib sorts the keys)
        if not x or level <= 0:
            return "{...}" if x else "{}"
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}" for k, v in islice(x.items(), self.maxdict)]
        return "{" + ", ".join(pieces) + (", ..." if len(x) > self.maxdict else "") + "}"


_SHORT = _ShortRepr()


def _quoted(head: str | bytes, limit: int) -> str:
    text = repr(head)
    return text if len(text) <= limit + 3 else text[:limit] + text[-1]  # escapes made it longer: keep the quote


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` for a message: cut to about ``limit`` characters, the length noted, passwords masked.

    Never builds the whole repr, so a value built from nested YAML aliases prints in microseconds.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(mask_url(value))
        return f"{_quoted(mask_url(value[:limit], was_cut=True), limit)}... ({len(value):,} characters)"
    if isinstance(value, bytes) and len(value) > limit:
        return f"{_quoted(value[:limit], limit)}... ({len(value):,} bytes)"
    try:
        text = _SHORT.repr(value)
    except (ValueError, RecursionError, TypeError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}..."


def cut(text: Any, limit: int = MAX_SHOWN) -> str:
    """Free text (a YAML problem, a key, a message) on one line, at most about ``limit`` characters."""
    text = str(text)
    if len(text) > limit:
        text = mask_url(text[:limit], was_cut=True) + "..."
    else:
        text = mask_url(text)
    return text.replace("\n", " ").replace("\r", " ")


def _capped(problems: list[str], source: str) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"{source}: ... and {len(problems) - MAX_PROBLEMS} more problems"]


def _flatten(loc: tuple[Any, ...]) -> str:
    # pydantic puts union tags ('Range') and validator names into the location: drop them
    parts = [cut(p, 60) for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or p.startswith("function-")))]
    return cut(".".join(parts)) or "<spec>"


def format_errors(source: str, err: ValidationError, flags: dict[str, str] | None = None) -> list[str]:
    """One line per problem: ``file: field=value: message``; one line per field for unions.

    ``flags`` maps a field path to the CLI flag that set it, named in that field's line.
    """
    lines: dict[str, str] = {}
    for e in err.errors():
        field = _flatten(e["loc"])
        value = e.get("input")
        value_text = "<missing>" if e["type"] == "missing" else shown(value)
        msg = cut(e["msg"].removeprefix("Value error, "), 300)
        origin = f" (from {flags[field]})" if flags and field in flags else ""
        if field == "<spec>":  # a check across fields: its message names them; the whole input would be noise
            lines.setdefault(msg, f"{source}: {msg}")
            continue
        lines.setdefault(field, f"{source}: {field}={value_text}{origin}: {msg}")
    return list(lines.values())


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (plain data, no tag that runs code) that refuses what would blow up.

    PyYAML shares the object an alias names, so nested aliases (the "billion laughs") cost nothing
    to load but expand without bound wherever the value is walked or printed. This counts every
    node as it is read, an alias as a copy of all it names, and stops at once past MAX_YAML_NODES.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> nodes under it, aliases expanded
        self._depth = 0
        self._total = 0  # nodes so far, aliases expanded: the whole document's size when done

    def _count(self, n: int, mark: Any) -> None:
        self._total += n
        if self._total > MAX_YAML_NODES:
            raise ComposerError(None, None, f"more than {MAX_YAML_NODES:,} values, each alias counted as a copy "
                                "(a study spec has a few hundred)", mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None and id(node) not in self._sizes:  # super() reports an undefined one
                raise ComposerError(None, None, f"alias *{cut(event.anchor, 60)} is inside the node it names",
                                    event.start_mark)
            node = super().compose_node(parent, index)
            self._count(self._sizes[id(node)], event.start_mark)
            return node
        self._depth += 1
        try:
            mark = self.peek_event().start_mark
            if self._depth > MAX_YAML_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
            self._count(1, mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[id(v)] for v in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        return node

    def construct_yaml_int(self, node: Any) -> int:
        try:
            value = super().construct_yaml_int(node)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            value = MAX_INT
        if abs(value) >= MAX_INT:
            raise ConstructorError(None, None, f"integer {cut(node.value, 40)} is out of range (|n| < 2**63)",
                                   node.start_mark)
        return value

    def construct_mapping(self, node: Any, deep: bool = False) -> dict:
        """As ``yaml.safe_load``'s, but a key written twice in one mapping is refused (YAML keeps the
        later value silently, so a user who writes ``n_trials`` twice cannot tell which one ran).
        Keys a merge (``<<: *base``) brings in may still be overridden: that is what merges are for."""
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # a mapping or list as a key is refused by the constructor itself
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # unhashable: refused below, as safe_load does
                    continue
                if first is not key_node:
                    a, b = first.start_mark, key_node.start_mark
                    where = (f"lines {a.line + 1} and {b.line + 1}" if a.line != b.line
                             else f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}")
                    raise ConstructorError(None, None, f"key {shown(key, 60)} is given twice, on {where} "
                                           "(keep one: YAML would silently use the later)", b)
        return super().construct_mapping(node, deep)

    def construct_yaml_timestamp(self, node: Any) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError, AttributeError) as exc:  # 2024-13-45; `!!timestamp x` does not match
            raise ConstructorError(None, None, f"{cut(node.value, 40)} is not a date: {exc}", node.start_mark) from None


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)
_BoundedLoader.add_constructor("tag:yaml.org,2002:timestamp", _BoundedLoader.construct_yaml_timestamp)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with bounds (nodes after alias expansion, depth, integer size).

    Raises ``yaml.YAMLError`` for anything it refuses.
    """
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except (ValueError, OverflowError, RecursionError, AttributeError, TypeError) as exc:  # a constructor's own
        raise yaml.YAMLError(f"{type(exc).__name__}: {exc}") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where (line and column when known) and what."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character or a bad byte
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        return f" at character {exc.position}: {exc.reason} ({shown(char, 20)})"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{where}: {cut(getattr(exc, 'problem', None) or exc)}"


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO would block the read forever
            raise SpecError([f"{path}: cannot read spec: not a regular file (a FIFO, socket or device)"])
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError([f"{path}: cannot read spec: {cut(exc.strerror or exc)}"]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError([f"{path}: spec is over {MAX_SPEC_BYTES // 1024} kB (a study spec is a few kB)"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"{path}: cannot read spec: not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                         f"at offset {exc.start})"]) from None
    try:
        raw = safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([f"{path}: not valid YAML{_yaml_problem(exc)}"]) from None
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
            problems.append(f"--set {shown(item)}: expected KEY.PATH=VALUE, e.g. --set student.recipe.epochs=2")
            continue
        try:
            value = safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(f"--set {shown(item)}: the value is not valid YAML{_yaml_problem(exc)}")
            continue
        pairs.append((".".join(p.strip() for p in parts), value))
    if problems:
        raise SpecError(_capped(problems, "--set"))
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
        raise SpecError([f"--set {cut(path, 100)}={shown(value, 100)}: {cut(head, 60)} is {shown(inner, 100)}, "
                         "not a mapping of keys"])
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
            data = out.get("data")
            if data is None or isinstance(data, dict):  # anything else is reported as not a mapping
                out["data"] = {**(data or {}), "root": value}
        else:
            out[key] = value
    return out


def _data_root_problem(source: str, raw: dict[str, Any], flags: dict[str, str]) -> str | None:
    """The data root, checked from the raw input so it is reported beside every other problem."""
    data = raw.get("data", {})
    if not isinstance(data, dict):
        return None
    root, dataset = data.get("root", DataSpec().root), data.get("dataset", DataSpec().dataset)
    if not isinstance(root, (str, Path)):
        return None
    origin = f" (from {flags['data.root']})" if "data.root" in flags else ""
    try:
        if Path(root).exists():
            return None
    except OSError as exc:  # a name too long, a folder we may not read
        return f"{source}: data.root={shown(str(root))}{origin}: cannot be read: {cut(exc.strerror or exc, 100)}"
    hint = ""
    if isinstance(dataset, str) and len(dataset) + len(str(root)) < MAX_SHOWN:
        hint = cut(f" (download with: kdsweep data download {dataset} --root {root})")
    return f"{source}: data.root={shown(str(root))}{origin}: folder does not exist{hint}"


def resolve_arch_files(raw: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """``FILE.py:CALLABLE`` arch strings made absolute against the spec's folder (``base_dir``), so every
    later step (trials, workers started elsewhere, the logged params) names the same file."""
    from kdsweep.core.models.sources import resolve_arch

    out = dict(raw)
    for role in ("teacher", "student"):
        part = out.get(role)
        if isinstance(part, dict) and isinstance(part.get("arch"), str):
            out[role] = {**part, "arch": resolve_arch(part["arch"], base_dir)}
    search = out.get("search")
    arch = search.get("arch") if isinstance(search, dict) else None  # search.arch: {choices: [...]}
    if isinstance(arch, dict) and isinstance(arch.get("choices"), list):
        choices = [resolve_arch(c, base_dir) if isinstance(c, str) else c for c in arch["choices"]]
        out["search"] = {**search, "arch": {**arch, "choices": choices}}
    return out


def load_spec(path: Path, overrides: dict[str, Any] | None = None, *, check_data: bool = True) -> StudySpec:
    """Read, override and validate a study spec; raise SpecError listing every problem.

    Nothing is created here (no folder, database or run), so a bad spec leaves no trace.
    """
    return spec_from_raw(read_yaml(path), path, overrides, check_data=check_data)


def spec_from_raw(raw: dict[str, Any], path: Path | str, overrides: dict[str, Any] | None = None, *,
                  check_data: bool = True) -> StudySpec:
    """:func:`load_spec` of a spec already read (a dict from the Python API); ``path`` names it in problems."""
    if not isinstance(raw, dict):
        raise SpecError([f"{path}: the spec must be a mapping of fields, got {shown(raw, 100)}"])
    overrides = overrides or {}
    raw = resolve_arch_files(apply_overrides(raw, overrides), Path(path).resolve().parent)
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
        raise SpecError(_capped(problems, str(path)))
    return spec
