"""TrainConfig: every knob of one training run, as plain frozen values.

The study layer builds one of these per run; the trainer reads nothing else, so a run is fully
described by this object (and its hash keys the teacher and baseline caches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

Optimizer = Literal["sgd", "adam"]
Schedule = Literal["cosine", "onecycle", "constant"]
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True)
class TrainConfig:
    arch: str  # a name in MODELS
    width: float = 1.0  # channel multiplier of the model
    epochs: int = 30
    batch_size: int = 256
    optimizer: Optimizer = "sgd"  # sgd is always nesterov-capable SGD with momentum
    lr: float = 0.1  # peak learning rate (the one-cycle maximum, the cosine start)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Schedule = "cosine"  # stepped per batch, not per epoch
    label_smoothing: float = 0.0  # off by default: a label-smoothed teacher distils worse
    ema_decay: float = 0.0  # 0 = no EMA; else weight of the old average per step
    temperature: float = 4.0  # KD softmax temperature T
    alpha: float = 0.0  # weight of the KD term; 0 = plain cross-entropy (no teacher needed)
    patience: int = 0  # early stopping: epochs without a better test accuracy; 0 = off
    augment: bool = True  # 4-pixel-pad random crop + horizontal flip
    seed: int = 0
    device: str = "cpu"
    precision: Precision = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU (teacher: precision.teacher_bf16)
    channels_last: bool | None = None  # None = on for CUDA and CPU convnets (faster on both)

    def __post_init__(self) -> None:
        checks = {
            "width": self.width > 0,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "label_smoothing": 0 <= self.label_smoothing < 1,
            "ema_decay": 0 <= self.ema_decay < 1,
            "temperature": self.temperature > 0,
            "alpha": 0 <= self.alpha <= 1,
            "patience": self.patience >= 0,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"TrainConfig.{field}={getattr(self, field)!r} is out of range")

    @property
    def distills(self) -> bool:
        return self.alpha > 0

    def as_params(self) -> dict[str, object]:
        """Flat dict for logging (MLflow params)."""
        return dataclasses.asdict(self)

    def fingerprint(self, *, data_identity: str, ignore: tuple[str, ...] = ("device",)) -> str:
        """Hash of everything that changes the trained weights, plus the data's identity.

        The device is left out by default so a teacher trained on one GPU is reused on another.
        """
        params = {k: v for k, v in self.as_params().items() if k not in ignore}
        blob = json.dumps({"config": params, "data": data_identity}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
