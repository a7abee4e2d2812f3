"""Teachers and baselines are trained once and reused, keyed by config fingerprint + data identity.

A run is reused only when a finished run with the same key exists (found through the Recorder),
so a changed recipe, seed, width or data set never picks up a stale model. A training that was
interrupted resumes from its per-epoch checkpoint in ``workdir/progress``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from kdsweep.core.checkpoint import load_weights, save_checkpoint, weights_payload
from kdsweep.core.config import TrainConfig
from kdsweep.core.data import ImageSet
from kdsweep.core.models import count_params
from kdsweep.core.summary import RunSummary
from kdsweep.core.teachers import TeacherSource
from kdsweep.core.trainer import TrainResult, evaluate_split, train
from kdsweep.core.weights import file_digest
from kdsweep.study.coordination import Locks, ProcessLocks
from kdsweep.study.recorder import Recorder, RunInfo


@dataclass
class Trained:
    model: nn.Module  # the weights the run is judged by (EMA when EMA was on)
    summary: RunSummary
    run_id: str
    reused: bool

    @property
    def selected_acc(self) -> float:
        """The final accuracy decisions compare against (validation; test under ``selection: test``)."""
        return self.summary.selection().final_acc


def data_params(data: ImageSet) -> dict[str, str]:
    """What every run records of its data: the data set, its identity, and the validation split's identity."""
    return {"data_identity": data.identity, "dataset": data.name, "val_split": data.val_digest[:16] or "none",
            "val_images": 0 if data.val_y is None else len(data.val_y), "loader": data.loader}


def model_params(cfg: TrainConfig, data: ImageSet) -> dict[str, int]:
    """The run's model size as a param (``param_count``), known before it trains (the metric
    ``num_params`` comes with the final metrics): counted on the meta device, no weights made."""
    return {"param_count": _param_count(cfg.arch, cfg.width, cfg.arch_args, data.num_classes)}


@functools.lru_cache(maxsize=256)
def _param_count(arch: str, width: float, arch_args: str, num_classes: int) -> int:
    import torch

    from kdsweep.core.models import build_model

    args = json.loads(arch_args) if arch_args else None
    try:
        with torch.device("meta"):
            model = build_model(arch, num_classes=num_classes, width=width, arch_args=args)
    except Exception:  # noqa: BLE001 - a builder that needs real tensors: build it on the CPU
        model = build_model(arch, num_classes=num_classes, width=width, arch_args=args)
    return count_params(model)


def obtain(role: str, cfg: TrainConfig, data: ImageSet, *, recorder: Recorder, workdir: Path,
           tags: dict[str, str], teacher: TeacherSource | None = None, locks: Locks = ProcessLocks(),
           train_fn: Callable[..., TrainResult] = train, params: dict | None = None,
           finish: Callable[[RunSummary], RunSummary] | None = None) -> Trained:
    """Reuse the finished run with this config and data, or train (resuming) and record it.

    Under ``locks`` (one per role and key), so of several workers the first trains and the
    others wait, then find its finished run. ``params`` are logged beside the config's; ``finish``
    completes the summary before it is recorded (a confirmation run's comparison with its baseline).
    """
    key = cfg.fingerprint(data_identity=data.identity)
    with locks.hold(f"{role}:{key}"):
        return _obtain(role, key, cfg, data, recorder=recorder, workdir=workdir, tags=tags, teacher=teacher,
                       train_fn=train_fn, params=params, finish=finish)


def _obtain(role: str, key: str, cfg: TrainConfig, data: ImageSet, *, recorder: Recorder, workdir: Path,
            tags: dict[str, str], teacher: TeacherSource | None, train_fn: Callable[..., TrainResult],
            params: dict | None, finish: Callable[[RunSummary], RunSummary] | None) -> Trained:
    found = recorder.find(role, key)
    if found is not None and found.checkpoint is not None:
        model = load_weights(found.checkpoint, cfg.arch, cfg.width, data.num_classes, cfg.arch_kwargs)
        return Trained(model.eval(), found.summary, found.run_id, reused=True)

    params = {**cfg.as_params(), **data_params(data), **model_params(cfg, data), **(params or {})}
    run_id = recorder.start(RunInfo(role=role, key=key, params=params, tags=tags))
    try:
        result = train_fn(cfg, data, teacher=teacher, checkpoint_path=workdir / "progress" / f"{role}-{key}.pt",
                          on_epoch=lambda m: recorder.log_epoch(run_id, m))
    except BaseException as exc:
        recorder.fail(run_id, f"{type(exc).__name__}: {exc}", killed=isinstance(exc, KeyboardInterrupt))
        raise
    if result.resumed_from_epoch:  # epochs checkpointed before a kill whose log was lost, as objective.py does
        recorder.backfill(run_id, result.history[:result.resumed_from_epoch])
    final = save_checkpoint(weights_payload(cfg, data.num_classes, result.scored_model),
                            workdir / "models" / f"{role}-{key}.pt")
    summary = result.summary()
    if finish is not None:
        summary = finish(summary)
    recorder.finish(run_id, summary, final)
    return Trained(result.scored_model.eval(), summary, run_id, reused=False)


def from_checkpoint(path: Path, cfg: TrainConfig, data: ImageSet, *, recorder: Recorder,
                    tags: dict[str, str]) -> Trained:
    """A teacher given as weights: evaluate it once and record it as the study's teacher run."""
    digest = file_digest(path)[:16]
    # a model from a user's file or another library: its code's identity too (a built-in's key is as before)
    code = "" if cfg.arch_source == "builtin" else f":{cfg.arch}:{cfg.arch_source}:{cfg.arch_args}"
    key = hashlib.sha256(f"{digest}:{data.identity}{code}".encode()).hexdigest()[:16]
    model = load_weights(path, cfg.arch, cfg.width, data.num_classes, cfg.arch_kwargs)
    found = recorder.find("teacher", key)
    if found is not None:
        return Trained(model.eval(), found.summary, found.run_id, reused=True)
    train_acc, test_acc, val_acc = evaluate_split(model, data, device=cfg.device)
    summary = RunSummary(final_epoch=0, final_test_acc=test_acc, final_train_acc=train_acc,
                         num_params=count_params(model), final_val_acc=val_acc)
    params = {"arch": cfg.arch, "width": cfg.width, "arch_source": cfg.arch_source, "checkpoint": str(path),
              "checkpoint_sha256": digest, **({"arch_args": cfg.arch_args} if cfg.arch_args else {}),
              **data_params(data), **model_params(cfg, data)}
    run_id = recorder.start(RunInfo(role="teacher", key=key, params=params, tags={**tags, "source": "checkpoint"}))
    recorder.finish(run_id, summary, Path(path))
    return Trained(model.eval(), summary, run_id, reused=False)
