"""TrainConfig: every knob of one training run, as plain frozen values.

The study layer builds one of these per run; the trainer reads nothing else, so a run is fully
described by this object (and its hash keys the teacher and baseline caches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal, Mapping

Optimizer = Literal["sgd", "adam"]
Schedule = Literal["cosine", "onecycle", "constant", "multistep"]
Precision = Literal["auto", "fp32", "bf16"]
_SET_ONLY = ("arch_args", "init", "init_sha256")  # logged only when not empty


def arch_args_json(args: Mapping[str, object] | None) -> str:
    """A spec's ``arch_args`` mapping as TrainConfig keeps it: sorted JSON, "" when empty."""
    return json.dumps(dict(args), sort_keys=True, separators=(",", ":")) if args else ""


@dataclass(frozen=True)
class TrainConfig:
    arch: str  # an arch string (core/models/sources.py): a built-in name, torchvision:/timm:NAME, FILE.py:fn
    width: float = 1.0  # channel multiplier of the model
    epochs: int = 30
    batch_size: int = 256
    optimizer: Optimizer = "sgd"  # sgd is always nesterov-capable SGD with momentum
    lr: float = 0.1  # peak learning rate (the one-cycle maximum, the cosine start)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"  # stepped per batch, not per epoch
    milestones: tuple[int, ...] = ()  # multistep: the epochs after which the lr is multiplied by gamma
    gamma: float = 0.1  # multistep: the factor at each milestone
    label_smoothing: float = 0.0  # off by default: a label-smoothed teacher distils worse
    ema_decay: float = 0.0  # 0 = no EMA; else weight of the old average per step
    method: str = "ce"  # the loss, a name in kdsweep.core.methods.LOSSES; ce = no teacher
    method_params: Mapping[str, float] = field(default_factory=dict)  # that method's params (defaults filled in)
    patience: int = 0  # early stopping: epochs without a better validation accuracy (test without one); 0 = off
    augment: bool = True  # 4-pixel-pad random crop + horizontal flip
    seed: int = 0
    device: str = "cpu"
    precision: Precision = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU (teacher: precision.teacher_bf16)
    channels_last: bool | None = None  # None = on for CUDA and CPU convnets (faster on both)
    arch_args: str = ""  # the builder's keyword arguments as sorted JSON ("" = none); see arch_kwargs
    arch_source: str = ""  # the builder's identity (models.identity: "builtin", "timm 1.0.31", a file's sha256)
    init: str = ""  # a weights file the model starts from (teacher.init; core/weights.py); "" = fresh init
    init_sha256: str = ""  # that file's digest: a changed file is another run
    # feature methods: the layers tapped (named_modules paths); empty = the model's defaults (core/taps.py)
    student_features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = {
            "width": self.width > 0,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "ema_decay": 0 <= self.ema_decay < 1,
            "patience": self.patience >= 0,
            "milestones": (self.schedule != "multistep" or len(self.milestones) > 0)
            and all(m >= 1 for m in self.milestones),
            "gamma": self.gamma > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is out of range")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))  # a YAML list stays hashable
        for name in ("student_features", "teacher_features"):  # a list from a spec: a hashable tuple
            object.__setattr__(self, name, tuple(str(p) for p in getattr(self, name)))
        from kdsweep.core.methods import LOSSES
        from kdsweep.core.models.sources import identity

        # filled in here, so every config (and its fingerprint) names the code and weights it builds from
        if not self.arch_source:
            object.__setattr__(self, "arch_source", identity(self.arch))
        if self.init and not self.init_sha256:
            from kdsweep.core.weights import file_digest

            object.__setattr__(self, "init_sha256", file_digest(self.init))
        # resolved once: every param of the method present, each checked against its bounds
        object.__setattr__(self, "method_params", LOSSES.get(self.method).resolve(dict(self.method_params)))

    @property
    def distills(self) -> bool:
        """Whether this run learns from a teacher (its method needs teacher logits)."""
        from kdsweep.core.methods import LOSSES

        return LOSSES.get(self.method).needs_teacher

    @property
    def arch_kwargs(self) -> dict[str, object]:
        """``arch_args`` as the keyword arguments the builder takes."""
        return json.loads(self.arch_args) if self.arch_args else {}

    def as_params(self) -> dict[str, object]:
        """Flat dict for logging (MLflow params): the method's params as ``<method>.<param>``.

        ``arch_args``, ``init`` and the feature layers only when set, so a built-in model's params (and
        fingerprint) are what they were before models came from other sources and methods read features.
        """
        out = {k: v for k, v in dataclasses.asdict(self).items()
               if k != "method_params" and not (k in _SET_ONLY and v == "")}
        for k in ("student_features", "teacher_features"):  # left out when empty: older runs' params stay as they were
            if not out[k]:
                del out[k]
            else:
                out[k] = ",".join(out[k])
        # a combination's params are already named by their part (kd+at: kd.alpha, at.at_weight)
        prefix = "" if "+" in self.method else f"{self.method}."
        out.update({f"{prefix}{k}": v for k, v in sorted(self.method_params.items())})
        return out

    def fingerprint(self, *, data_identity: str, ignore: tuple[str, ...] = ("device",)) -> str:
        """Hash of everything that changes the trained weights, plus the data's identity.

        The device is left out by default so a teacher trained on one GPU is reused on another.
        """
        if self.schedule != "multistep":  # unused, so runs (and caches) from before these fields keep their keys
            ignore = (*ignore, "milestones", "gamma")
        params = {k: v for k, v in self.as_params().items()
                  if k not in ignore and not (k == "arch_source" and v == "builtin")}
        blob = json.dumps({"config": params, "data": data_identity}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def kd_fields(alpha: float, temperature: float = 4.0) -> dict[str, object]:
    """TrainConfig fields for Hinton's KD (method ``kd``); ``alpha`` 0 is plain cross-entropy (method ``ce``)."""
    if alpha == 0:
        return {"method": "ce", "method_params": {}}
    return {"method": "kd", "method_params": {"alpha": alpha, "temperature": temperature}}
