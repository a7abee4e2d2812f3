"""train(cfg, data, teacher, on_epoch) -> TrainResult: one training run, CPU or CUDA, same code.

Design notes:
- Data stays on the device (DeviceLoader); loss and accuracy are summed in device tensors and
  read back once per epoch, so the step never waits on the host.
- The learning rate is stepped per batch (cosine or one-cycle).
- EMA uses torch.optim.swa_utils.AveragedModel; raw and EMA weights are both evaluated.
- With ``checkpoint_path`` the full state is written atomically after every epoch and a rerun
  continues from it; the loader's randomness depends only on (seed, epoch), so a resumed run
  sees the same batches it would have seen.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from kdsweep.core.checkpoint import load_checkpoint, save_checkpoint
from kdsweep.core.config import TrainConfig
from kdsweep.core.data import DeviceLoader, ImageSet
from kdsweep.core.models import build_model, count_params
from kdsweep.core.step import StepRunner, autocast_for
from kdsweep.core.teachers import TeacherSource
from kdsweep.errors import KdsweepError


_INIT_LOCK = threading.Lock()


class DivergedError(KdsweepError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float  # running accuracy on the augmented training batches of this epoch
    test_acc: float  # raw weights, whole test split
    test_acc_ema: float | None  # EMA weights; None when EMA is off
    lr: float  # learning rate at the end of the epoch
    epoch_seconds: float
    images_per_second: float  # training images per second (evaluation excluded)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "epoch"}

    @property
    def score(self) -> float:
        """The accuracy this run is judged by: EMA weights when EMA is on, else raw."""
        return self.test_acc_ema if self.test_acc_ema is not None else self.test_acc


@dataclass
class TrainResult:
    model: nn.Module
    ema_model: nn.Module | None
    history: list[EpochMetrics]
    num_params: int
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> EpochMetrics:
        return self.history[-1]

    @property
    def scored_model(self) -> nn.Module:
        return self.ema_model.module if self.ema_model is not None else self.model

    def summary(self) -> dict[str, float]:
        """Final-epoch numbers (the reported epoch), plus the best epoch for reference only."""
        best = max(self.history, key=lambda m: m.score)
        out = {
            "final_epoch": self.final.epoch,
            "final_test_acc": self.final.score,
            "final_test_acc_raw": self.final.test_acc,
            "final_train_acc": self.final.train_acc,
            "best_test_acc": best.score,
            "best_epoch": best.epoch,
            "num_params": self.num_params,
        }
        if self.final.test_acc_ema is not None:
            out["final_test_acc_ema"] = self.final.test_acc_ema
        return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdsweepError(f"device={name!r}: CUDA is not available on this machine")
    return device


def use_channels_last(model: nn.Module, device: torch.device) -> bool:
    """channels_last by default on CUDA; on the CPU only when no conv is narrower than 16 channels.

    On the CPU (oneDNN 3.12 in torch 2.14.1) channels_last speeds resnet20 up ~1.5x, but the
    weight gradient of a 1x1 stride-2 conv with fewer than 8 input channels (the shortcut of an
    x0.25 CIFAR ResNet) overruns a buffer there: heap corruption, hangs or wrong gradients were
    seen. So narrow models stay in the default layout on the CPU.
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(widths) and min(widths) >= 16


def make_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # no weight decay on BatchNorm and biases: the usual CIFAR recipe, and it matters for tiny widths
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, **fused)
    raise ValueError(f"optimizer={cfg.optimizer!r}; choose from ['adam', 'sgd']")


def make_schedule(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise ValueError(f"schedule={cfg.schedule!r}; choose from ['constant', 'cosine', 'onecycle']")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, autocast) -> float:
    """Top-1 accuracy on the whole split (one host sync at the end)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=loader.device)
    total = 0
    for batch in loader.epoch(0):
        with autocast():
            logits = model(batch.x)
        correct += (logits.argmax(1) == batch.y).sum()
        total += batch.y.numel()
    model.train(was_training)
    return correct.item() / max(1, total)


def _checkpoint_state(cfg, epoch, model, ema, opt, sched, history, best, bad_epochs) -> dict:
    return {
        "config": cfg.as_params(),
        "epoch": epoch,
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "history": [asdict(m) for m in history],
        "best": best,
        "bad_epochs": bad_epochs,
    }


def _same_run(saved: dict, cfg: TrainConfig) -> bool:
    ignore = {"device"}
    now = {k: v for k, v in cfg.as_params().items() if k not in ignore}
    then = {k: v for k, v in saved.get("config", {}).items() if k not in ignore}
    return now == then


def train(
    cfg: TrainConfig,
    data: ImageSet,
    *,
    teacher: TeacherSource | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    checkpoint_path: Path | None = None,
    model: nn.Module | None = None,
    accel: str = "auto",
) -> TrainResult:
    """Train ``cfg.arch`` on ``data``; distil from ``teacher`` when ``cfg.alpha > 0``.

    ``on_epoch`` is called after each epoch (after the checkpoint is written); it may raise to
    stop the run (Optuna pruning raises TrialPruned through here untouched).
    ``accel`` picks how steps run (kdsweep.core.step): ``auto`` captures each step as a CUDA graph
    on CUDA and runs eagerly elsewhere; ``eager``, ``graph`` and ``compile`` force a mode.
    """
    if cfg.distills and teacher is None:
        raise ValueError(f"alpha={cfg.alpha!r} needs a teacher")
    device = resolve_device(cfg.device)
    autocast = autocast_for(cfg, device)

    with _INIT_LOCK:  # trials in threads: the global RNG must not interleave between seed and init
        torch.manual_seed(cfg.seed)
        if model is None:
            model = build_model(cfg.arch, num_classes=data.num_classes, width=cfg.width)
    model.to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else use_channels_last(model, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher.to(device, channels_last=channels_last)

    common = dict(device=device, mean=data.mean, std=data.std, channels_last=channels_last)
    train_loader = DeviceLoader(
        data.train_x, data.train_y, batch_size=cfg.batch_size, train=True, seed=cfg.seed,
        pad=4 if cfg.augment else 0, flip=cfg.augment, **common,
    )
    # big evaluation batches on a GPU: fewer launches per epoch-end evaluation
    eval_batch = max(cfg.batch_size, 2048 if device.type == "cuda" else 512)
    test_loader = DeviceLoader(data.test_x, data.test_y, batch_size=eval_batch, train=False, **common)
    if teacher is not None and hasattr(teacher, "for_run"):
        teacher = teacher.for_run(data.identity, train_loader)  # a logit table only where it covers these batches
    steps = len(train_loader)
    if steps == 0:
        raise KdsweepError(
            f"batch_size={cfg.batch_size} is larger than the {len(data.train_y)} training images"
        )

    opt = make_optimizer(cfg, model, device)
    sched = make_schedule(cfg, opt, steps)
    ema = None
    if cfg.ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)

    history: list[EpochMetrics] = []
    best, bad_epochs, start_epoch = -1.0, 0, 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        saved = load_checkpoint(checkpoint_path, map_location=device)
        if _same_run(saved, cfg):
            model.load_state_dict(saved["model"])
            if ema is not None and saved["ema"] is not None:
                ema.load_state_dict(saved["ema"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            history = [EpochMetrics(**m) for m in saved["history"]]
            best, bad_epochs, start_epoch = saved["best"], saved["bad_epochs"], saved["epoch"]

    runner = StepRunner(cfg, model, opt, sched, lambda o: make_schedule(cfg, o, steps), ema, train_loader,
                        teacher, accel=accel)
    stopped_early = False
    if cfg.patience and bad_epochs >= cfg.patience:
        stopped_early = True
    model.train()
    for epoch in range(start_epoch, cfg.epochs if not stopped_early else start_epoch):
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # this run's stream only: trials may share the GPU
        t0 = time.perf_counter()
        loss_sum, correct, seen = runner.run_epoch(epoch)
        train_loss = loss_sum.item() / seen  # the epoch's one host sync
        train_seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss became {train_loss} in epoch {epoch + 1} (lr={cfg.lr})")
        test_acc = evaluate(model, test_loader, autocast)
        test_acc_ema = evaluate(ema.module, test_loader, autocast) if ema is not None else None
        metrics = EpochMetrics(
            epoch=epoch + 1, train_loss=train_loss, train_acc=correct.item() / seen, test_acc=test_acc,
            test_acc_ema=test_acc_ema, lr=sched.get_last_lr()[0],
            epoch_seconds=time.perf_counter() - t0, images_per_second=seen / train_seconds,
        )
        history.append(metrics)
        if metrics.score > best:
            best, bad_epochs = metrics.score, 0
        else:
            bad_epochs += 1
        if checkpoint_path is not None:
            save_checkpoint(_checkpoint_state(cfg, epoch + 1, model, ema, opt, sched, history, best, bad_epochs),
                            Path(checkpoint_path))
        if on_epoch is not None:
            on_epoch(metrics)
        if cfg.patience and bad_epochs >= cfg.patience:
            stopped_early = True
            break

    return TrainResult(
        model=model, ema_model=ema, history=history, num_params=count_params(model),
        stopped_early=stopped_early, resumed_from_epoch=start_epoch,
        extras={"cuda_graph": float(runner.graph is not None)},
    )


def evaluate_split(model: nn.Module, data: ImageSet, *, device: str = "cpu", batch_size: int = 512) -> tuple[float, float]:
    """(train accuracy without augmentation, test accuracy) of a trained model."""
    dev = resolve_device(device)
    model.to(dev)
    common = dict(batch_size=batch_size, device=dev, mean=data.mean, std=data.std, train=False)
    autocast = contextlib.nullcontext if dev.type == "cpu" else (lambda: torch.autocast(dev.type, dtype=torch.bfloat16))
    train_acc = evaluate(model, DeviceLoader(data.train_x, data.train_y, **common), autocast)
    test_acc = evaluate(model, DeviceLoader(data.test_x, data.test_y, **common), autocast)
    return train_acc, test_acc
