"""Teachers and baselines are trained once and reused, keyed by config fingerprint + data identity.

A run is reused only when a finished run with the same key exists (found through the Recorder),
so a changed recipe, seed, width or data set never picks up a stale model. A training that was
interrupted resumes from its per-epoch checkpoint in ``workdir/progress``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from kdsweep.core.checkpoint import load_weights, save_checkpoint, weights_payload
from kdsweep.core.config import TrainConfig
from kdsweep.core.data import ImageSet
from kdsweep.core.models import count_params
from kdsweep.core.teachers import TeacherSource
from kdsweep.core.trainer import TrainResult, evaluate_split, train
from kdsweep.study.coordination import Locks, ProcessLocks
from kdsweep.study.recorder import Recorder, RunInfo


@dataclass
class Trained:
    model: nn.Module  # the weights the run is judged by (EMA when EMA was on)
    summary: dict[str, float]
    run_id: str
    reused: bool

    @property
    def test_acc(self) -> float:
        return self.summary["final_test_acc"]


def obtain(role: str, cfg: TrainConfig, data: ImageSet, *, recorder: Recorder, workdir: Path,
           tags: dict[str, str], teacher: TeacherSource | None = None, locks: Locks = ProcessLocks(),
           train_fn: Callable[..., TrainResult] = train) -> Trained:
    """Reuse the finished run with this config and data, or train (resuming) and record it.

    Under ``locks`` (one per role and key), so of several workers the first trains and the
    others wait, then find its finished run.
    """
    key = cfg.fingerprint(data_identity=data.identity)
    with locks.hold(f"{role}:{key}"):
        return _obtain(role, key, cfg, data, recorder=recorder, workdir=workdir, tags=tags, teacher=teacher,
                       train_fn=train_fn)


def _obtain(role: str, key: str, cfg: TrainConfig, data: ImageSet, *, recorder: Recorder, workdir: Path,
            tags: dict[str, str], teacher: TeacherSource | None, train_fn: Callable[..., TrainResult]) -> Trained:
    found = recorder.find(role, key)
    if found is not None and found.checkpoint is not None:
        model = load_weights(found.checkpoint, cfg.arch, cfg.width, data.num_classes)
        return Trained(model.eval(), dict(found.summary), found.run_id, reused=True)

    params = {**cfg.as_params(), "data_identity": data.identity, "dataset": data.name}
    run_id = recorder.start(RunInfo(role=role, key=key, params=params, tags=tags))
    try:
        result = train_fn(cfg, data, teacher=teacher, checkpoint_path=workdir / "progress" / f"{role}-{key}.pt",
                          on_epoch=lambda m: recorder.log_epoch(run_id, m))
    except BaseException as exc:
        recorder.fail(run_id, f"{type(exc).__name__}: {exc}", killed=isinstance(exc, KeyboardInterrupt))
        raise
    final = save_checkpoint(weights_payload(cfg, data.num_classes, result.scored_model),
                            workdir / "models" / f"{role}-{key}.pt")
    summary = result.summary()
    recorder.finish(run_id, summary, final)
    return Trained(result.scored_model.eval(), summary, run_id, reused=False)


def from_checkpoint(path: Path, cfg: TrainConfig, data: ImageSet, *, recorder: Recorder,
                    tags: dict[str, str]) -> Trained:
    """A teacher given as weights: evaluate it once and record it as the study's teacher run."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    key = hashlib.sha256(f"{digest}:{data.identity}".encode()).hexdigest()[:16]
    model = load_weights(path, cfg.arch, cfg.width, data.num_classes)
    found = recorder.find("teacher", key)
    if found is not None:
        return Trained(model.eval(), dict(found.summary), found.run_id, reused=True)
    train_acc, test_acc = evaluate_split(model, data, device=cfg.device)
    summary = {"final_test_acc": test_acc, "final_train_acc": train_acc, "num_params": count_params(model),
               "final_epoch": 0}
    params = {"arch": cfg.arch, "width": cfg.width, "checkpoint": str(path), "checkpoint_sha256": digest,
              "data_identity": data.identity, "dataset": data.name}
    run_id = recorder.start(RunInfo(role="teacher", key=key, params=params, tags={**tags, "source": "checkpoint"}))
    recorder.finish(run_id, summary, Path(path))
    return Trained(model.eval(), summary, run_id, reused=False)
