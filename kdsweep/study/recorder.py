"""What the study layer tells the outside world. The tracking layer implements it with MLflow.

The study layer never imports MLflow: it calls a Recorder, so the same runner works with MLflow,
with nothing (``NullRecorder``), or with a test double.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kdsweep.core.data import ImageSet
from kdsweep.core.summary import RunSummary
from kdsweep.core.trainer import EpochMetrics

# the splits a run reads, in order, each with the ImageSet attribute prefixes that hold it
# (``<prefix>_y`` labels, optional ``<prefix>_identity``); a split the data lacks is left out
SPLITS = (("train", ("train",)), ("validation", ("val", "validation")), ("test", ("test",)))


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    summary: RunSummary
    checkpoint: Path | None  # local path to the final weights, when they could be fetched


@dataclass
class RunInfo:
    role: str  # teacher | baseline | distilled | confirm
    key: str  # config fingerprint (teacher, baseline) or trial id (distilled)
    params: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None  # reopen this run (a retried trial) instead of starting one


@dataclass(frozen=True)
class DataSplit:
    """One split of the study's data, as a tracker records it (an MLflow input dataset)."""

    dataset: str  # registry name, e.g. cifar10
    split: str  # train | validation | test
    digest: str  # the split's own identity where it has one (validation indices), else the data identity
    source: str  # the data root
    rows: int


def describe_data(data: ImageSet, root: Path | str) -> dict[str, Any]:
    """What a tracker needs to know of the data: its splits, classes and normalisation (plain values)."""
    splits = []
    for split, prefixes in SPLITS:
        for prefix in prefixes:
            labels = getattr(data, f"{prefix}_y", None)
            if labels is not None:
                digest = (getattr(data, f"{prefix}_digest", None) or getattr(data, f"{prefix}_identity", None)
                          or data.identity)
                splits.append(asdict(DataSplit(data.name, split, digest, str(Path(root).resolve()), len(labels))))
                break
    return {"name": data.name, "identity": data.identity, "num_classes": data.num_classes,
            "image_size": data.image_size, "mean": list(data.mean), "std": list(data.std),
            "splits": splits}


class Recorder(Protocol):
    def begin_study(self, study_name: str, params: dict[str, Any]) -> None: ...

    def find(self, role: str, key: str) -> FinishedRun | None: ...

    def start(self, info: RunInfo) -> str: ...

    def log_epoch(self, run_id: str, metrics: EpochMetrics) -> None: ...

    def finish(self, run_id: str, summary: RunSummary, checkpoint: Path | None) -> None: ...

    def backfill(self, run_id: str, history: list[EpochMetrics]) -> None:
        """Log the epochs of ``history`` that ``run_id`` lacks (a resumed run whose last epoch was
        checkpointed but never logged: killed in between, or the server went down)."""

    def fail(self, run_id: str, reason: str, *, killed: bool = False) -> None: ...

    def end_study(self, summary: dict[str, Any]) -> None: ...


class NullRecorder:
    """Records nothing and finds nothing: every teacher and baseline is trained afresh."""

    def begin_study(self, study_name: str, params: dict[str, Any]) -> None:
        pass

    def find(self, role: str, key: str) -> FinishedRun | None:
        return None

    def start(self, info: RunInfo) -> str:
        return info.run_id or f"{info.role}-{info.key}"

    def log_epoch(self, run_id: str, metrics: EpochMetrics) -> None:
        pass

    def finish(self, run_id: str, summary: RunSummary, checkpoint: Path | None) -> None:
        pass

    def backfill(self, run_id: str, history: list[EpochMetrics]) -> None:
        pass

    def fail(self, run_id: str, reason: str, *, killed: bool = False) -> None:
        pass

    def end_study(self, summary: dict[str, Any]) -> None:
        pass
