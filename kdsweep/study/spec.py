"""StudySpec: the validated study YAML. ``load_spec`` is the only place YAML is read.

Everything is checked here, once, so a typo fails before any study, run or file is created.
Relative paths (data root, SQLite files) are relative to the directory kdsweep is run from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from kdsweep.errors import SpecError

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACTS = "mlruns/artifacts"
STORAGE_SCHEMES = {"sqlite", "postgresql"}  # what kdsweep runs studies on (see study/coordination.py)
TRACKING_SCHEMES = {"sqlite", "postgresql", "mysql", "http", "https", "file", "databricks"}
# CLI flags that override spec fields: named in messages so a bad flag is not blamed on the file
FLAG_FIELDS = {"data_root": ("data.root", "--data-root or $KDSWEEP_DATA_ROOT"), "n_trials": ("n_trials", "--n-trials"),
               "storage": ("storage", "--storage"), "tracking_uri": ("tracking_uri", "--tracking-uri"),
               "device": ("device", "--device"), "jobs": ("jobs", "--jobs")}


def _scheme(url: str) -> str:
    """``postgresql+psycopg2://...`` -> ``postgresql``; no scheme -> ``''``."""
    head, sep, _ = url.partition(":")
    return head.split("+", 1)[0].lower() if sep else ""


class Strict(BaseModel):
    # inf and nan are never meant: `lr: .inf` would pass a `> 0` check and diverge at once
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Range(Strict):
    """A continuous range; ``log`` samples on a log scale; ``step`` makes it discrete."""

    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low={self.low!r} is above high={self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got low={self.low!r}")
        return self

    def values(self) -> list[float]:
        return [self.low, self.high]


class Choices(Strict):
    choices: list[float] = Field(min_length=1)

    def values(self) -> list[float]:
        return list(self.choices)


def _param_kind(v: Any) -> str:
    # pick the union member from the input's shape, so a bad range reports its own problem
    # (e.g. low above high) instead of also failing as choices and as a number
    if isinstance(v, (Range, Choices)):
        return type(v).__name__
    if isinstance(v, dict):
        return "Choices" if "choices" in v else "Range"
    return "Number"


Param = Annotated[Union[Annotated[Range, Tag("Range")], Annotated[Choices, Tag("Choices")],
                        Annotated[float, Tag("Number")]], Discriminator(_param_kind)]
_UNION_TAGS = {"Range", "Choices", "Number"}

# bounds of each searchable value: (check, description)
_BOUNDS = {
    "temperature": (lambda v: v > 0, "must be > 0"),
    "alpha": (lambda v: 0 <= v <= 1, "must lie in [0, 1] (alpha weights the KD term)"),
    "ema_decay": (lambda v: 0 <= v < 1, "must lie in [0, 1) (0 turns EMA off)"),
    "lr": (lambda v: v > 0, "must be > 0"),
    "width": (lambda v: v > 0, "must be > 0"),
}


def _check_bounds(name: str, p: Param | None) -> Param | None:
    if p is None:
        return p
    ok, text = _BOUNDS[name]
    values = [p] if isinstance(p, (int, float)) else p.values()
    bad = [v for v in values if not ok(v)]
    if bad:
        raise ValueError(f"{bad[0]!r} {text}")
    return p


class Recipe(Strict):
    """How a network is trained (teacher, baseline and distilled students)."""

    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=256, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    patience: int = Field(default=0, ge=0)
    augment: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class DataSpec(Strict):
    dataset: str = "cifar10"
    root: Path = Path("data")
    limit_per_file: int | None = Field(default=None, ge=1)  # first N records of each official file
    image_size: int | None = Field(default=None, ge=8)  # image folders: resize + centre crop

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from kdsweep.core.data import DATASETS

        if v not in DATASETS:
            raise ValueError(f"unknown dataset; choose from {DATASETS.names()}")
        return v


def _known_model(v: str) -> str:
    from kdsweep.core.models import MODELS

    if v not in MODELS:
        raise ValueError(f"unknown architecture; choose from {MODELS.names()}")
    return v


class TeacherSpec(Strict):
    arch: str
    width: float = Field(default=1.0, gt=0)
    checkpoint: Path | None = None  # a trained teacher's weights: skip training
    seed: int = 0
    recipe: Recipe = Recipe()
    # pretrained: trained once (or loaded from checkpoint), then frozen for every trial.
    # online: each trial and seed trains a fresh teacher on the labels beside its student, on the
    # student's batches (its epochs, batch size, augmentation and seed); the rest of recipe applies
    mode: Literal["pretrained", "online"] = "pretrained"

    _arch = field_validator("arch")(classmethod(lambda cls, v: _known_model(v)))

    @field_validator("mode")
    @classmethod
    def _online_trains(cls, v: str, info) -> str:
        if v == "online" and info.data.get("checkpoint") is not None:
            raise ValueError("an online teacher is trained with each student; drop checkpoint or use mode: pretrained")
        return v

    @field_validator("checkpoint")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError("checkpoint file does not exist")
        return v


class StudentSpec(Strict):
    arch: str
    width: float = Field(default=1.0, gt=0)  # used when the search space has no width
    temperature: float = Field(default=4.0, gt=0)  # used when not searched
    alpha: float = Field(default=0.9, ge=0, le=1)  # KD-term weight, used when not searched
    recipe: Recipe = Recipe()

    _arch = field_validator("arch")(classmethod(lambda cls, v: _known_model(v)))


class SearchSpace(Strict):
    """Each entry: a Range, a list of choices, a fixed number, or absent (use the student's value)."""

    temperature: Param | None = None
    alpha: Param | None = None
    ema_decay: Param | None = None
    lr: Param | None = None
    width: Param | None = None

    @field_validator("temperature", "alpha", "ema_decay", "lr", "width")
    @classmethod
    def _in_bounds(cls, v: Param | None, info) -> Param | None:
        return _check_bounds(info.field_name, v)

    def items(self) -> list[tuple[str, Param]]:
        return [(k, v) for k, v in self.__dict__.items() if v is not None]


class StudySpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    seeds: list[int] = Field(default=[0], min_length=1)
    data: DataSpec = DataSpec()
    teacher: TeacherSpec
    student: StudentSpec
    search: SearchSpace = SearchSpace()
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    n_trials: int = Field(default=8, ge=1)
    timeout: float | None = Field(default=None, gt=0)  # seconds for the whole study
    objective: Literal["test_acc", "delta_vs_baseline"] = "test_acc"
    # also minimise the student's parameter count: Optuna keeps the Pareto front of accuracy vs size
    multi_objective: bool = False
    storage: str = DEFAULT_STORAGE  # Optuna storage URL
    tracking_uri: str = DEFAULT_TRACKING_URI  # MLflow tracking URI
    artifacts: str = DEFAULT_ARTIFACTS  # artifact root for new MLflow experiments (local stores)
    device: str = "auto"
    # teacher logits of every augmented view computed once and looked up by the trials (study/tables.py);
    # auto: on when that takes fewer teacher forwards than running the teacher in every trial
    teacher_table: Literal["auto", "on", "off"] = "auto"
    # how distilled trials run their steps (core/step.py): auto = CUDA graph on a GPU, eager on the CPU;
    # compile adds torch.compile (about 30 s once per process and shape, then faster steps)
    accel: Literal["auto", "eager", "graph", "compile"] = "auto"
    # trials trained at once in this process (threads), packed into one loop per seed: the runs of a
    # seed share batches and one teacher forward per batch (core/packing.py); 1 = one trial at a time
    jobs: int = Field(default=1, ge=1, le=64)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds repeat")
        return v

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, v: str) -> str:
        scheme = _scheme(v)
        if scheme not in STORAGE_SCHEMES or (scheme == "sqlite" and not v.startswith("sqlite:///")):
            raise ValueError("Optuna storage must be sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB")
        return v

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, v: str) -> str:
        scheme = _scheme(v)
        if scheme not in TRACKING_SCHEMES or (scheme == "sqlite" and not v.startswith("sqlite:///")):
            raise ValueError(f"MLflow tracking URI must start with one of {sorted(TRACKING_SCHEMES)} "
                             "(e.g. sqlite:///mlruns/mlflow.db or http://127.0.0.1:5000)")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return v

    @field_validator("multi_objective")
    @classmethod
    def _multi_objective_fits(cls, v: bool, info) -> bool:
        # declared after sampler, pruner and search, so info.data holds them when they are valid
        if not v:
            return v
        pruner, sampler, search = (info.data.get(k) for k in ("pruner", "sampler", "search"))
        if pruner not in (None, "none"):
            raise ValueError(f"Optuna prunes single-objective studies only; set pruner: none (got {pruner!r})")
        if sampler == "cmaes":
            raise ValueError("the cmaes sampler optimises one objective; use tpe, random or grid")
        w = search.width if search is not None else None
        if search is not None and (w is None or isinstance(w, (int, float)) or len(set(w.values())) < 2):
            raise ValueError("the parameter count only changes with the student's width; "
                             "search width over two or more values")
        return v

    @model_validator(mode="after")
    def _online_epochs_match(self) -> "StudySpec":
        # the online teacher steps on the student's batches; a different value set for it would be ignored
        if self.teacher.mode == "online":
            if "seed" in self.teacher.model_fields_set:
                raise ValueError(f"teacher.seed={self.teacher.seed!r}: an online teacher is trained once per seed in "
                                 "seeds, with that seed; leave teacher.seed out")
            for name in ("epochs", "batch_size"):
                t, s = getattr(self.teacher.recipe, name), getattr(self.student.recipe, name)
                if name in self.teacher.recipe.model_fields_set and t != s:
                    raise ValueError(f"teacher.recipe.{name}={t!r}: an online teacher trains on the student's "
                                     f"batches, so it must equal student.recipe.{name}={s!r} (or be left out)")
        return self

    @model_validator(mode="after")
    def _jobs_fit(self) -> "StudySpec":
        if self.jobs > 1 and self.teacher.mode == "online":
            raise ValueError(f"jobs={self.jobs!r}: an online teacher trains with each student, so its trials "
                             "cannot share one; use jobs: 1 with teacher.mode online")
        return self

    @model_validator(mode="after")
    def _sampler_fits_space(self) -> "StudySpec":
        if self.sampler == "grid":
            ranged = [k for k, v in self.search.items() if isinstance(v, Range) and v.step is None]
            if ranged:
                raise ValueError(f"grid sampler needs choices (or a step) for {ranged}")
        return self


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
