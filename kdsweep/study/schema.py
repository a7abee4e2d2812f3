"""The study YAML's schema: pydantic models, checked once (``spec.load_spec`` reads the file).

The search space and the student's method params are built from the one declaration of every
searchable value (``kdsweep.core.searchable``): a method's params become fields of
``search.<method>`` and ``student.<method>`` with that method's bounds, so a new method file
needs no edit here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, create_model, field_validator,
                      model_validator)

from kdsweep.core.methods import LOSSES
from kdsweep.core.searchable import ARCH, METHOD, RECIPE, Searchable, method_searchables
from kdsweep.study.model_fields import plain_args, readable_file, width_fits

from kdsweep.stores import DEFAULT_ARTIFACTS, DEFAULT_STORAGE, DEFAULT_TRACKING_URI, url_problem

# the stores kdsweep runs on, by field: kdsweep.stores.SUPPORTED (the CLI's store flags read it too)
# lengths past any real spec's, so that `kdsweep study validate` of a valid spec prints a few kB at most
MAX_ITEMS = 64  # seeds, choices
MAX_TEXT = 1000  # URLs and paths
# every integer field: what torch and SQL take, and what the YAML reader reads (a digit string coerced
# to int would otherwise pass with 2,000 digits and print as such)
Int64 = Annotated[int, Field(gt=-(2**63), lt=2**63)]


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
    """A list of values to pick from: numbers, or names (``method: {choices: [kd, dkd]}``)."""

    choices: list[Union[float, str]] = Field(min_length=1, max_length=MAX_ITEMS)

    def values(self) -> list[float | str]:
        return list(self.choices)


def _param_kind(v: Any) -> str:
    # pick the union member from the input's shape, so a bad range reports its own problem
    # (e.g. low above high) instead of also failing as choices and as a number
    if isinstance(v, (Range, Choices)):
        return type(v).__name__
    if isinstance(v, dict):
        return "Choices" if "choices" in v else "Range"
    if isinstance(v, str):
        return "Name"
    return "Number"


Param = Annotated[Union[Annotated[Range, Tag("Range")], Annotated[Choices, Tag("Choices")],
                        Annotated[float, Tag("Number")], Annotated[str, Tag("Name")]], Discriminator(_param_kind)]
_UNION_TAGS = {"Range", "Choices", "Number", "Name"}


def _bounded(s: Searchable):
    """The validator of one searchable value: its kind (numbers, or method names) and its bounds."""
    def check(p):
        if p is None:
            return p
        if isinstance(p, Range) and s.kind in ("method", "arch"):
            raise ValueError(f"{'a method' if s.kind == 'method' else 'an arch'} is picked from choices, not a range")
        values = [p] if isinstance(p, (int, float, str)) else p.values()
        for v in values:
            if s.kind == "float" and isinstance(v, str):
                raise ValueError(f"{v!r} is not a number")
            problem = s.check(v)
            if problem:
                raise ValueError(f"{v!r} {problem}")
        return p
    return check


def _searched(s: Searchable):
    return (Annotated[Param | None, AfterValidator(_bounded(s))], Field(default=None, description=s.help))


def _fixed(s: Searchable):
    def check(v: float | None) -> float | None:
        problem = None if v is None else s.check(v)
        if problem:
            raise ValueError(problem)
        return v
    return (Annotated[float | None, AfterValidator(check)], Field(default=None, description=s.help))


def _move_legacy_kd(raw: Any, where: str) -> Any:
    """``temperature``/``alpha`` at the top of ``search``/``student`` were kd's before methods existed."""
    if not isinstance(raw, dict) or not any(k in raw for k in ("temperature", "alpha")):
        return raw
    kd = raw.get("kd") if raw.get("kd") is not None else {}
    if not isinstance(kd, dict):
        return raw
    out, kd = dict(raw), dict(kd)
    for k in ("temperature", "alpha"):
        if k in out:
            kd.setdefault(k, out.pop(k))
    out["kd"] = kd
    warnings.warn(f"{where}.temperature and {where}.alpha are kd's params: write {where}.kd.temperature and "
                  f"{where}.kd.alpha (the old keys are read as those since kdsweep 0.2 and go in 0.4)",
                  FutureWarning, stacklevel=2)
    return out


class _SearchBase(Strict):
    """Each entry: a Range, a list of choices, a fixed value, or absent (use the student's value).

    ``method`` picks the KD method; ``<method>: {param: ...}`` searches that method's params, drawn
    only in the trials that draw the method (define-by-run).
    """

    @model_validator(mode="before")
    @classmethod
    def _legacy_kd_keys(cls, raw: Any) -> Any:
        return _move_legacy_kd(raw, "search")

    def items(self) -> list[tuple[str, Param]]:
        """Every searched entry by its searchable name (``lr``, ``method``, ``dkd.beta``...)."""
        out = []
        for k, v in self.__dict__.items():
            if v is None:
                continue
            if isinstance(v, BaseModel) and not isinstance(v, (Range, Choices)):
                out += [(f"{k}.{pk}", pv) for pk, pv in v.__dict__.items() if pv is not None]
            else:
                out.append((k, v))
        return out

    def get(self, name: str) -> Param | None:
        return dict(self.items()).get(name)

    def methods(self, default: str) -> list[str]:
        """The methods the trials can draw."""
        p = getattr(self, "method", None)
        if p is None:
            return [default]
        return [str(v) for v in p.values()] if isinstance(p, Choices) else [str(p)]


def _method_models(kind: str, field_for) -> dict[str, Any]:
    """One sub-model per registered method: ``<kind>.<method>.<param>`` fields with the method's bounds."""
    fields = {}
    for name in LOSSES.names():
        params = {s.param: field_for(s) for s in method_searchables(name)}
        if params:
            fields[name] = (create_model(f"{kind}_{name}", __base__=Strict, **params) | None, None)
    return fields


SearchSpace = create_model(
    "SearchSpace", __base__=_SearchBase,
    **{s.name: _searched(s) for s in (*RECIPE, METHOD, ARCH)},
    **_method_models("search", _searched),
)


class Recipe(Strict):
    """How a network is trained (teacher, baseline and distilled students)."""

    epochs: Int64 = Field(default=30, ge=1)
    batch_size: Int64 = Field(default=256, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["cosine", "onecycle", "constant", "multistep"] = "cosine"
    # multistep (step decay): the lr is multiplied by gamma after each of these epochs, e.g. the KD
    # papers' CIFAR-100 recipe [150, 180, 210] of 240 epochs; a milestone past epochs never applies
    milestones: tuple[Int64, ...] = Field(default=(), max_length=MAX_ITEMS)
    gamma: float = Field(default=0.1, gt=0, le=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    patience: Int64 = Field(default=0, ge=0)
    augment: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @model_validator(mode="after")
    def _milestones_fit(self) -> "Recipe":
        m = list(self.milestones)
        if self.schedule == "multistep" and not m:
            raise ValueError("schedule=multistep needs milestones, the epochs to decay after (e.g. [150, 180, 210])")
        if m and self.schedule != "multistep":
            raise ValueError(f"milestones={m!r} apply to schedule: multistep only (schedule is {self.schedule!r})")
        if m and (m[0] < 1 or any(b <= a for a, b in zip(m, m[1:]))):
            raise ValueError(f"milestones={m!r} must be increasing epochs >= 1")
        return self


class DataSpec(Strict):
    dataset: str = "cifar10"
    root: Path = Path("data")
    limit_per_file: Int64 | None = Field(default=None, ge=1)  # first N records of each official file
    image_size: Int64 | None = Field(default=None, ge=8)  # image folders: resize + centre crop
    # held out of the training images, stratified by class (core/split.py): a fraction in (0, 1) or a
    # count of images; 0 only with selection: test. Fixed by the training data and split_seed.
    val_split: Union[Annotated[Int64, Field(ge=0)], Annotated[float, Field(gt=0, lt=1)]] = 0.1
    split_seed: Int64 = 0
    # data larger than memory (issue 22; kdsweep.core.memory, kdsweep.core.stream, kdsweep.core.formats):
    # auto = resident while the decoded splits fit memory_budget (bytes, or '512MB', '4GB', '2GiB';
    # default a quarter of RAM), else stream (decode + augment in `workers` DataLoader processes)
    loader: Literal["auto", "resident", "stream"] = "auto"
    memory_budget: Union[Int64, Annotated[str, Field(max_length=40)], None] = None
    augment: Literal["cifar", "imagenet"] = "cifar"  # what recipe.augment applies; imagenet streams
    workers: Int64 = Field(default=2, ge=0, le=64)
    max_bad_images: Int64 = Field(default=0, ge=0)  # corrupt images skipped mid-epoch before the run stops
    image_column: str = Field(default="image", max_length=200)  # hf_disk
    label_column: str = Field(default="label", max_length=200)  # hf_disk

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from kdsweep.core.dataset_registry import DATASETS

        if v not in DATASETS:
            raise ValueError(f"unknown dataset; choose from {DATASETS.names()}")
        return v

    @field_validator("loader")
    @classmethod
    def _streamable(cls, v: str, info) -> str:
        from kdsweep.core.memory import STREAMABLE

        dataset = info.data.get("dataset")
        if v == "stream" and dataset is not None and dataset not in STREAMABLE:
            raise ValueError(f"{dataset} is read whole; the stream loader reads {list(STREAMABLE)}")
        return v

    @field_validator("memory_budget")
    @classmethod
    def _bytes(cls, v: int | str | None) -> int | None:
        from kdsweep.core.memory import parse_bytes

        return None if v is None else parse_bytes(v)

    @field_validator("augment")
    @classmethod
    def _augment_fits_loader(cls, v: str, info) -> str:
        if v == "imagenet" and info.data.get("loader") == "resident":
            raise ValueError("random-resized crops need the full images: use data.loader stream or auto")
        if v == "imagenet" and info.data.get("dataset") in ("cifar10", "cifar100"):
            raise ValueError("the imagenet recipe crops full-size photos; cifar data uses augment: cifar")
        return v


def _known_model(v: str) -> str:
    # the forms of core/models/sources.py, from the text and a file's existence only (no import of the
    # user's module, torchvision or timm here: the preflight builds each model once)
    from kdsweep.core.models.sources import known_problem

    problem = known_problem(v)
    if problem:
        raise ValueError(problem)
    return v


class StoredLabelsSpec(Strict):
    """FKD's stored soft labels (core/soft_labels.py): per training image, ``crops`` random-resized
    crops and the teacher's ``top_k`` probabilities on each, written once, replayed by every trial."""

    crops: Int64 = Field(default=10, ge=1, le=1000)
    top_k: Int64 = Field(default=10, ge=1, le=1000)
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area range

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("scale needs 0 < low <= high <= 1")
        return v


class TeacherSpec(Strict):
    arch: str
    arch_args: dict[str, Any] = {}  # keyword arguments of the arch's builder (e.g. timm's drop_path_rate)
    width: float = Field(default=1.0, gt=0)
    checkpoint: Path | None = None  # a trained teacher's weights: skip training
    # weights to start from, then fine-tuned with recipe on the study's data; a head of another class
    # count is re-created (core/weights.py). Both take kdsweep files, bare state_dicts and .safetensors
    init: Path | None = None
    seed: Int64 = 0
    recipe: Recipe = Recipe()
    # pretrained: trained once (or loaded from checkpoint), then frozen for every trial.
    # online: each trial and seed trains a fresh teacher on the labels beside its student, on the
    # student's batches (its epochs, batch size, augmentation and seed); the rest of recipe applies
    mode: Literal["pretrained", "online"] = "pretrained"
    # FKD: the teacher's top-k soft labels on stored crops, in place of a teacher running every step
    stored_labels: StoredLabelsSpec | None = None
    # feature methods: the teacher layers tapped (named_modules paths); empty: the family's defaults
    features: list[Annotated[str, Field(max_length=MAX_TEXT)]] = Field(default=[], max_length=MAX_ITEMS)

    _arch = field_validator("arch")(classmethod(lambda cls, v: _known_model(v)))
    _args = field_validator("arch_args")(classmethod(lambda cls, v: plain_args(v)))
    _width = field_validator("width")(classmethod(lambda cls, v, info: width_fits(v, info)))

    @field_validator("mode")
    @classmethod
    def _online_trains(cls, v: str, info) -> str:
        if v == "online" and info.data.get("checkpoint") is not None:
            raise ValueError("an online teacher is trained with each student; drop checkpoint or use mode: pretrained")
        if v == "online" and info.data.get("init") is not None:
            raise ValueError("teacher.init fine-tunes one pretrained teacher; drop init or use mode: pretrained")
        return v

    @field_validator("checkpoint")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        return readable_file(v, "checkpoint")

    @field_validator("init")
    @classmethod
    def _init_exists(cls, v: Path | None, info) -> Path | None:
        if v is not None and info.data.get("checkpoint") is not None:
            raise ValueError("checkpoint uses weights as they are, init fine-tunes them: give one of the two")
        return readable_file(v, "init")


class _StudentBase(Strict):
    arch: str
    arch_args: dict[str, Any] = {}  # keyword arguments of the arch's builder
    width: float = Field(default=1.0, gt=0)  # used when the search space has no width
    method: str = "kd"  # the KD method (a name in kdsweep.core.methods.LOSSES), used when not searched
    recipe: Recipe = Recipe()
    # feature methods: the student layers tapped (named_modules paths); empty: the family's defaults
    features: list[Annotated[str, Field(max_length=MAX_TEXT)]] = Field(default=[], max_length=MAX_ITEMS)

    _arch = field_validator("arch")(classmethod(lambda cls, v: _known_model(v)))
    _args = field_validator("arch_args")(classmethod(lambda cls, v: plain_args(v)))
    _width = field_validator("width")(classmethod(lambda cls, v, info: width_fits(v, info)))

    @model_validator(mode="before")
    @classmethod
    def _legacy_kd_keys(cls, raw: Any) -> Any:
        return _move_legacy_kd(raw, "student")

    @field_validator("method", mode="before")
    @classmethod
    def _combined_method(cls, v: Any) -> Any:
        # `method: [kd, at]`: the sum of both methods' terms, the method named kd+at (core/methods/combined.py)
        if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
            return "+".join(v)
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if "+" in v:
            LOSSES.get(v)  # a combination: its ValueError says what is wrong with it
        if v not in LOSSES:
            raise ValueError(f"unknown KD method; choose from {LOSSES.names()}")
        return v

    def method_params(self, method: str) -> dict[str, float]:
        """The values set here for ``method``'s params (the rest take the method's defaults)."""
        given = getattr(self, method, None)
        return {} if given is None else {k: v for k, v in given.__dict__.items() if v is not None}


# ``student.<method>: {param: value}``: the fixed values of a method's params, with its bounds
StudentSpec = create_model("StudentSpec", __base__=_StudentBase, **_method_models("student", _fixed))


class ConfirmSpec(Strict):
    """After the search: the top ``top_k`` trials by validation, and their baselines, trained again on
    ``seeds`` that the search never used; the report's headline numbers come from these runs.
    ``per_method``: the top ``top_k`` of each KD method the search drew (``top_k: 1``: the confirmed
    best of each method), so methods are compared on fresh seeds too."""

    top_k: int = Field(default=3, ge=1, le=100)
    per_method: bool = False
    seeds: list[Int64] = Field(default=[100, 101, 102, 103, 104], min_length=1, max_length=MAX_ITEMS)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds repeat")
        return v


Percent = Annotated[float, Field(ge=0, le=100)]


class _PublishedBase(Strict):
    source: str = Field(min_length=1, max_length=MAX_TEXT)  # where the numbers come from (paper, table)

    @model_validator(mode="after")
    def _some_row(self) -> "_PublishedBase":
        if not self.rows():
            raise ValueError("published: holds no numbers; give teacher, student or a method's accuracy (percent)")
        return self

    def rows(self) -> dict[str, float]:
        """The published accuracies by row name (teacher, student, method), in percent."""
        return {k: v for k, v in self.__dict__.items() if k != "source" and v is not None}


# ``published:``: a paper's top-1 test accuracies (percent) for this study's rows, which `kdsweep report`
# sets beside the measured ones: teacher, student (the baseline, trained without a teacher) and any
# KD method by name (its confirmed, else best, row).
Published = create_model(
    "Published", __base__=_PublishedBase,
    **{name: (Percent | None, None) for name in ("teacher", "student", *(m for m in LOSSES.names() if m != "ce"))},
)


ACCURACY_OBJECTIVES = ("val_acc", "delta_vs_baseline", "test_acc")
PARETO_METRICS = ("params", "latency_ms")


def _varies(p: Any) -> int:
    """How many values a search entry can take (0: not searched; 2 for any range)."""
    if p is None or isinstance(p, (int, float, str)):
        return 0 if p is None else 1
    return len(set(p.values()))


class StudySpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    seeds: list[Int64] = Field(default=[0], min_length=1, max_length=MAX_ITEMS)
    data: DataSpec = DataSpec()
    teacher: TeacherSpec
    student: StudentSpec
    search: SearchSpace = SearchSpace()
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    n_trials: Int64 = Field(default=8, ge=1)
    timeout: float | None = Field(default=None, gt=0)  # seconds for the whole study
    # what a trial is worth, on the selection split: val_acc (mean final validation accuracy over seeds),
    # delta_vs_baseline (its gain over the matched baselines, on validation), or test_acc (selection: test only)
    objective: Literal["val_acc", "delta_vs_baseline", "test_acc"] = "val_acc"
    # val: every decision (objective, pruning, early stopping, confirmation) reads the validation split;
    # test: there is none (data.val_split: 0) and decisions read the test split, which the report says
    selection: Literal["val", "test"] = "val"
    report_epoch: Literal["final", "best_val"] = "final"  # the epoch the report's headline numbers come from
    confirm: ConfirmSpec | None = None  # retrain the best trials on fresh seeds after the search
    # also minimise the student's parameter count: Optuna keeps the Pareto front of accuracy vs size
    multi_objective: bool = False
    # what multi_objective minimises beside accuracy: the parameter count, or the student's milliseconds per
    # image at batch 1 (core/latency.py); `objective: [val_acc, latency_ms]` sets both fields
    pareto_metric: Literal["params", "latency_ms"] = "params"
    # timed runs per batch size when measuring each student's latency (median taken; core/latency.py)
    latency_repeats: Int64 = Field(default=10, ge=1, le=1000)
    storage: str = Field(default=DEFAULT_STORAGE, max_length=MAX_TEXT)  # Optuna storage URL
    tracking_uri: str = Field(default=DEFAULT_TRACKING_URI, max_length=MAX_TEXT)  # MLflow tracking URI
    artifacts: str = Field(default=DEFAULT_ARTIFACTS, max_length=MAX_TEXT)  # artifact root for new MLflow experiments
    device: str = "auto"
    # teacher logits of every augmented view computed once and looked up by the trials (study/tables.py);
    # auto: on when that takes fewer teacher forwards than running the teacher in every trial
    teacher_table: Literal["auto", "on", "off"] = "auto"
    # how distilled trials run their steps (core/step.py): auto = CUDA graph on a GPU, eager on the CPU;
    # compile adds torch.compile (about 30 s once per process and shape, then faster steps)
    accel: Literal["auto", "eager", "graph", "compile"] = "auto"
    # trials trained at once in this process (threads), packed into one loop per seed: the runs of a
    # seed share batches and one teacher forward per batch (core/packing.py); 1 = one trial at a time
    jobs: Int64 = Field(default=1, ge=1, le=64)
    published: Published | None = None  # a paper's numbers for these rows, shown beside the measured ones
    # processes that train each run together, data parallel (core/distributed.py): each takes batch_size /
    # processes images of every batch, gradients averaged; NCCL and one GPU each on CUDA, gloo on the CPU
    processes: Int64 = Field(default=1, ge=1, le=64)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds repeat")
        return v

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, v: str) -> str:
        problem = url_problem("storage", v)
        if problem:
            raise ValueError(f"Optuna storage {problem}")
        return v

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, v: str) -> str:
        problem = url_problem("tracking_uri", v)
        if problem:
            raise ValueError(f"MLflow tracking URI {problem}")
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
        if search is not None and _varies(search.arch) < 2 and _varies(w) < 2:
            raise ValueError("the student's size and latency change only with its width or arch; "
                             "search width or arch over two or more values")
        return v

    @model_validator(mode="before")
    @classmethod
    def _objective_pair(cls, raw: Any) -> Any:
        # `objective: [val_acc, latency_ms]`: a Pareto study, read as multi_objective with that second metric
        if isinstance(raw, dict) and isinstance(raw.get("objective"), list) and len(raw["objective"]) == 2:
            first, second = raw["objective"]
            if first in ACCURACY_OBJECTIVES and second in PARETO_METRICS:
                return {**raw, "objective": first, "multi_objective": True, "pareto_metric": second}
        return raw

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_form(cls, v: Any) -> Any:
        if isinstance(v, list):  # a pair _objective_pair did not take
            raise ValueError(f"a Pareto objective is [ACCURACY, COST] with ACCURACY one of "
                             f"{list(ACCURACY_OBJECTIVES)} and COST one of {list(PARETO_METRICS)}")
        return v

    @model_validator(mode="after")
    def _processes_fit(self) -> "StudySpec":
        if self.processes > 1 and self.jobs > 1:
            raise ValueError(f"processes={self.processes} trains one run at a time on several processes; "
                             f"jobs={self.jobs} packs several runs into one process: use one of them")
        if self.processes > 1 and self.teacher.mode == "online":
            raise ValueError(f"processes={self.processes}: an online teacher trains in one process; "
                             "use teacher.mode: pretrained")
        return self

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
    def _selection_fits(self) -> "StudySpec":
        val = self.data.val_split
        if self.selection == "val" and val == 0:
            raise ValueError("data.val_split=0 leaves no validation split to select on; hold some training images "
                             "out (e.g. data.val_split: 0.1), or set selection: test to select on the test split")
        if self.selection == "test" and val != 0:
            raise ValueError(f"selection=test reads the test split, but data.val_split={val!r} holds a validation "
                             "split out: use selection: val, or data.val_split: 0")
        if self.objective == "test_acc" and self.selection != "test":
            raise ValueError("objective=test_acc selects on the test split; use objective: val_acc (the validation "
                             "split), or selection: test with data.val_split: 0")
        if self.objective == "val_acc" and self.selection == "test":
            raise ValueError("objective=val_acc with selection: test: there is no validation split; use test_acc")
        if self.confirm is not None:
            reused = sorted(set(self.confirm.seeds) & set(self.seeds))
            if reused:
                raise ValueError(f"confirm.seeds={self.confirm.seeds!r} repeat the search's seeds {reused}: "
                                 "confirmation needs seeds the search never used")
            if self.teacher.mode == "online":
                raise ValueError("confirm: the confirmation stage needs teacher.mode: pretrained "
                                 "(online pairs are confirmed by rerunning their trials on new seeds)")
        return self

    @model_validator(mode="after")
    def _searched_methods_drawn(self) -> "StudySpec":
        drawn = self.search.methods(self.student.method)
        drawn = list(dict.fromkeys(part for m in drawn for part in m.split("+")))  # kd+at draws kd's and at's params
        for name, _ in self.search.items():
            owner = name.split(".", 1)[0] if "." in name else None
            if owner is not None and owner not in drawn:
                raise ValueError(f"search.{name} is searched but no trial uses method {owner!r} "
                                 f"(the methods drawn: {drawn}; see search.method and student.method)")
        return self

    @model_validator(mode="after")
    def _searched_width_scales(self) -> "StudySpec":
        from kdsweep.core.models.sources import scales_with_width

        w = self.search.get("width")
        values = [] if w is None else [w] if isinstance(w, (int, float, str)) else w.values()
        if self.search.arch is not None:  # width is drawn only in trials whose arch scales: one must
            a = self.search.arch
            archs = [a] if isinstance(a, str) else [str(v) for v in a.values()]
            if any(v != 1.0 for v in values) and not any(scales_with_width(a) for a in archs):
                raise ValueError(f"search.width: no arch in search.arch {archs} scales (only built-in models do); "
                                 "drop search.width")
        elif any(v != 1.0 for v in values) and not scales_with_width(self.student.arch):
            raise ValueError(f"search.width: student.arch={self.student.arch!r} has a fixed width (only built-in "
                             "models scale); drop search.width")
        return self

    @model_validator(mode="after")
    def _stored_labels_fit(self) -> "StudySpec":
        if self.teacher.stored_labels is None:
            return self
        if self.teacher.mode != "pretrained":
            raise ValueError("teacher.stored_labels are the labels of a trained teacher; use mode: pretrained")
        refused = [m for m in self.search.methods(self.student.method)
                   if LOSSES.get(m).needs_teacher and not LOSSES.get(m).top_k_labels]
        if refused:
            raise ValueError(f"teacher.stored_labels: method {refused[0]!r} reads every teacher logit, "
                             "not top-k stored labels (methods that accept them: "
                             f"{[m for m in LOSSES.names() if LOSSES.get(m).top_k_labels]})")
        return self

    @model_validator(mode="after")
    def _feature_layers_exist(self) -> "StudySpec":
        # a feature method's layer names checked against the models (built on the meta device: no weights)
        taps = [m for m in self.search.methods(self.student.method) if LOSSES.get(m).taps]
        if not taps:
            return self
        if self.teacher.mode == "online":
            raise ValueError(f"method {taps[0]!r} reads the teacher's features: it needs teacher.mode: pretrained")
        for role, part in (("student", self.student), ("teacher", self.teacher)):
            if part.features:  # only then torch (taps.py imports it): a spec without layer names validates light
                import torch

                from kdsweep.core.models import build_model
                from kdsweep.core.taps import check_layers

                try:
                    with torch.device("meta"):
                        net = build_model(part.arch, num_classes=10, width=part.width)
                except Exception:  # a model that cannot be built without weights: checked when the run starts
                    continue
                try:
                    check_layers(net, part.features, f"{role}.features: {part.arch}")
                except Exception as exc:
                    raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _sampler_fits_space(self) -> "StudySpec":
        if self.sampler == "grid":
            ranged = [k for k, v in self.search.items() if isinstance(v, Range) and v.step is None]
            if ranged:
                raise ValueError(f"grid sampler needs choices (or a step) for {ranged}")
        return self


