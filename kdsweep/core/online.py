"""train_online: teacher and student trained together, step by step (online distillation).

Every step both networks see the same augmented batch. The teacher takes a plain cross-entropy
step on the labels; the student takes a KD step against the teacher's logits for that very
batch, detached, so the student never pushes the teacher. Both graphs are disjoint, so one
``backward`` call serves both losses. This is the Applied Edge AI lab 3 setup (ResNet-56 ->
ResNet-20 on CIFAR-100) without a pretrained teacher.

Optimiser, schedule, evaluation and the epoch record come from ``trainer``; only the paired
step and the paired checkpoint are new here. Early stopping follows the student's patience.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from kdsweep.core.checkpoint import load_checkpoint, save_checkpoint
from kdsweep.core.config import TrainConfig
from kdsweep.core.data import DeviceLoader, ImageSet
from kdsweep.core.losses import kd_loss
from kdsweep.core.models import build_model, count_params
from kdsweep.core.trainer import (
    DivergedError, EpochMetrics, TrainResult, autocast_for, evaluate, make_optimizer, make_schedule, resolve_device,
)
from kdsweep.errors import KdsweepError

# what both networks must share: they step on the same batches for the same number of epochs
SHARED = ("epochs", "batch_size", "augment", "device", "precision")


@dataclass
class OnlineResult:
    student: TrainResult
    teacher: TrainResult


class _Net:
    """One of the pair: model, optimiser, schedule, optional EMA, and this epoch's running sums."""

    def __init__(self, cfg: TrainConfig, num_classes: int, device: torch.device, channels_last: bool,
                 steps: int) -> None:
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        self.model = build_model(cfg.arch, num_classes=num_classes, width=cfg.width).to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(cfg, self.model, device)
        self.sched = make_schedule(cfg, self.opt, steps)
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
                    if cfg.ema_decay > 0 else None)
        self.history: list[EpochMetrics] = []

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "history": [asdict(m) for m in self.history]}

    def load(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        if self.ema is not None and saved["ema"] is not None:
            self.ema.load_state_dict(saved["ema"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.history = [EpochMetrics(**m) for m in saved["history"]]

    def after_step(self) -> None:
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def result(self, stopped_early: bool, start_epoch: int) -> TrainResult:
        return TrainResult(model=self.model, ema_model=self.ema, history=self.history,
                           num_params=count_params(self.model), stopped_early=stopped_early,
                           resumed_from_epoch=start_epoch)


def check_pair(student: TrainConfig, teacher: TrainConfig) -> None:
    """Both configs must agree on what they share; ValueError names the first mismatch."""
    for name in SHARED:
        if getattr(student, name) != getattr(teacher, name):
            raise ValueError(f"online distillation needs the same {name} for teacher and student, got "
                             f"teacher {getattr(teacher, name)!r} and student {getattr(student, name)!r}")
    if teacher.alpha != 0:
        raise ValueError(f"the online teacher learns from labels only; its alpha must be 0, got {teacher.alpha!r}")


def train_online(
    student_cfg: TrainConfig,
    teacher_cfg: TrainConfig,
    data: ImageSet,
    *,
    on_epoch: Callable[[EpochMetrics, EpochMetrics], None] | None = None,
    checkpoint_path: Path | None = None,
) -> OnlineResult:
    """Train ``teacher_cfg.arch`` on labels and ``student_cfg.arch`` from it, at the same time.

    ``on_epoch(student_metrics, teacher_metrics)`` runs after each epoch (after the checkpoint);
    it may raise to stop (Optuna pruning). With ``checkpoint_path`` a rerun resumes both nets.
    """
    check_pair(student_cfg, teacher_cfg)
    device = resolve_device(student_cfg.device)
    # channels_last is left off on the CPU: oneDNN's AVX2 1x1 stride-2 weight gradient in NHWC
    # corrupts memory when a layer has fewer than 8 input channels (oneDNN issue #6035), which
    # narrow CIFAR ResNets hit
    channels_last = student_cfg.channels_last if student_cfg.channels_last is not None else device.type == "cuda"
    autocast = autocast_for(student_cfg, device)
    common = dict(device=device, mean=data.mean, std=data.std, channels_last=channels_last)
    augment = student_cfg.augment
    train_loader = DeviceLoader(data.train_x, data.train_y, batch_size=student_cfg.batch_size, train=True,
                                seed=student_cfg.seed, pad=4 if augment else 0, flip=augment, **common)
    test_loader = DeviceLoader(data.test_x, data.test_y, batch_size=max(student_cfg.batch_size, 512), train=False,
                               **common)
    steps = len(train_loader)
    if steps == 0:
        raise KdsweepError(f"batch_size={student_cfg.batch_size} is larger than the {len(data.train_y)} "
                           "training images")
    teacher = _Net(teacher_cfg, data.num_classes, device, channels_last, steps)
    student = _Net(student_cfg, data.num_classes, device, channels_last, steps)

    best, bad_epochs, start_epoch = -1.0, 0, 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        saved = load_checkpoint(checkpoint_path, map_location=device)
        if _same_pair(saved, student_cfg, teacher_cfg):
            teacher.load(saved["teacher"])
            student.load(saved["student"])
            best, bad_epochs, start_epoch = saved["best"], saved["bad_epochs"], saved["epoch"]

    patience = student_cfg.patience
    stopped_early = bool(patience and bad_epochs >= patience)
    teacher.model.train()
    student.model.train()
    for epoch in range(start_epoch, start_epoch if stopped_early else student_cfg.epochs):
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        t0 = time.perf_counter()
        sums = {k: torch.zeros((), device=device) for k in ("t_loss", "s_loss")}
        hits = {k: torch.zeros((), dtype=torch.int64, device=device) for k in ("t", "s")}
        seen = 0
        for batch in train_loader.epoch(epoch):
            with autocast():
                t_logits = teacher.model(batch.x)
                s_logits = student.model(batch.x)
            t_loss = kd_loss(t_logits, batch.y, label_smoothing=teacher_cfg.label_smoothing)
            s_loss = kd_loss(s_logits, batch.y, t_logits.detach(), alpha=student_cfg.alpha,
                             temperature=student_cfg.temperature, label_smoothing=student_cfg.label_smoothing)
            teacher.opt.zero_grad(set_to_none=True)
            student.opt.zero_grad(set_to_none=True)
            (t_loss + s_loss).backward()  # disjoint graphs: each net gets only its own loss's gradient
            teacher.after_step()
            student.after_step()
            n = batch.y.numel()
            sums["t_loss"] += t_loss.detach() * n
            sums["s_loss"] += s_loss.detach() * n
            hits["t"] += (t_logits.detach().argmax(1) == batch.y).sum()
            hits["s"] += (s_logits.detach().argmax(1) == batch.y).sum()
            seen += n
        losses = {k: v.item() / seen for k, v in sums.items()}  # the epoch's host sync
        train_seconds = time.perf_counter() - t0
        for k, v in losses.items():
            if not math.isfinite(v):
                who = "teacher" if k == "t_loss" else "student"
                raise DivergedError(f"online {who} training loss became {v} in epoch {epoch + 1}")
        metrics = {}
        for key, net, loss in (("t", teacher, losses["t_loss"]), ("s", student, losses["s_loss"])):
            metrics[key] = EpochMetrics(
                epoch=epoch + 1, train_loss=loss, train_acc=hits[key].item() / seen,
                test_acc=evaluate(net.model, test_loader, autocast),
                test_acc_ema=evaluate(net.ema.module, test_loader, autocast) if net.ema is not None else None,
                lr=net.sched.get_last_lr()[0], epoch_seconds=time.perf_counter() - t0,
                images_per_second=seen / train_seconds)
            net.history.append(metrics[key])
        if metrics["s"].score > best:
            best, bad_epochs = metrics["s"].score, 0
        else:
            bad_epochs += 1
        if checkpoint_path is not None:
            save_checkpoint({"config": student_cfg.as_params(), "teacher_config": teacher_cfg.as_params(),
                             "epoch": epoch + 1, "teacher": teacher.state(), "student": student.state(),
                             "best": best, "bad_epochs": bad_epochs}, Path(checkpoint_path))
        if on_epoch is not None:
            on_epoch(metrics["s"], metrics["t"])
        if patience and bad_epochs >= patience:
            stopped_early = True
            break
    return OnlineResult(student=student.result(stopped_early, start_epoch),
                        teacher=teacher.result(stopped_early, start_epoch))


def _same_pair(saved: dict, student: TrainConfig, teacher: TrainConfig) -> bool:
    def strip(params: dict) -> dict:
        return {k: v for k, v in params.items() if k != "device"}

    return (strip(saved.get("config", {})) == strip(student.as_params())
            and strip(saved.get("teacher_config", {})) == strip(teacher.as_params()))
