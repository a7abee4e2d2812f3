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

from kdsweep.core import distributed
from kdsweep.core.checkpoint import load_checkpoint, save_checkpoint
from kdsweep.core.config import TrainConfig
from kdsweep.core.data import DeviceLoader, ImageSet
from kdsweep.core.feature_distiller import FeatureDistiller
from kdsweep.core.layout import use_channels_last
from kdsweep.core.methods import LOSSES
from kdsweep.core.models import build_model, count_params
from kdsweep.core.precision import autocast_for, teacher_bf16
from kdsweep.core.step import StepRunner
from kdsweep.core.summary import RunSummary
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
    loss_terms: dict[str, float] = field(default_factory=dict)  # the method's named terms; they sum to train_loss
    val_acc: float | None = None  # raw weights, the validation split; None when the data has none
    val_acc_ema: float | None = None

    def as_dict(self) -> dict[str, float]:
        """Flat metrics for logging: each loss term as ``loss_<term>``."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k not in ("epoch", "loss_terms")}
        out.update({f"loss_{name}": v for name, v in self.loss_terms.items()})
        return out

    @property
    def test_score(self) -> float:
        """Test accuracy of the scored weights: EMA weights when EMA is on, else raw. Reported, never decided on."""
        return self.test_acc_ema if self.test_acc_ema is not None else self.test_acc

    @property
    def val_score(self) -> float | None:
        """Validation accuracy of the scored weights (None without a validation split)."""
        return self.val_acc_ema if self.val_acc_ema is not None else self.val_acc

    @property
    def score(self) -> float:
        """The accuracy decisions read (early stopping, pruning, the best epoch): validation where the data
        has a validation split, else the test split (a study says so: ``selection: test``)."""
        return self.val_score if self.val_score is not None else self.test_score


@dataclass
class TrainResult:
    model: nn.Module
    ema_model: nn.Module | None
    history: list[EpochMetrics]
    num_params: int
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    extras: dict[str, float] = field(default_factory=dict)
    co_teacher: "TrainResult | None" = None  # online distillation: the teacher trained beside this run

    @property
    def final(self) -> EpochMetrics:
        return self.history[-1]

    @property
    def scored_model(self) -> nn.Module:
        return self.ema_model.module if self.ema_model is not None else self.model

    def summary(self) -> RunSummary:
        """The final epoch (reported by default) and the best epoch by validation, each with its test accuracy."""
        final = self.final
        best = max(self.history, key=lambda m: m.score)  # the first of equals: the earliest epoch
        val = final.val_score is not None
        return RunSummary(
            final_epoch=final.epoch, final_test_acc=final.test_score, final_train_acc=final.train_acc,
            num_params=self.num_params, final_test_acc_raw=final.test_acc, final_test_acc_ema=final.test_acc_ema,
            final_val_acc=final.val_score, best_val_epoch=best.epoch if val else None,
            best_val_acc=best.val_score if val else None, best_val_test_acc=best.test_score if val else None,
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdsweepError(f"device={name!r}: CUDA is not available on this machine")
    return device


def make_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device,
                   extra: nn.Module | None = None) -> torch.optim.Optimizer:
    # no weight decay on BatchNorm and biases: the usual CIFAR recipe, and it matters for tiny widths.
    # ``extra``: a feature method's connector, trained by the same optimizer under the same rule
    params = [*model.parameters(), *(extra.parameters() if extra is not None else ())]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
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
    if cfg.schedule == "multistep":  # milestones are epochs; the schedule steps per batch
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[m * steps_per_epoch for m in cfg.milestones], gamma=cfg.gamma)
    raise ValueError(f"schedule={cfg.schedule!r}; choose from ['constant', 'cosine', 'multistep', 'onecycle']")


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


def _same_config(saved: dict | None, cfg: TrainConfig) -> bool:
    ignore = {"device"}
    now = {k: v for k, v in cfg.as_params().items() if k not in ignore}
    then = {k: v for k, v in (saved or {}).get("config", {}).items() if k not in ignore}
    return now == then


@dataclass
class RunRequest:
    """What one training run is asked to do; ``train``'s arguments as one object (see :func:`train`)."""

    cfg: TrainConfig
    teacher: TeacherSource | None = None
    on_epoch: Callable[[EpochMetrics], None] | None = None
    checkpoint_path: Path | None = None
    model: nn.Module | None = None
    accel: str = "auto"
    # online distillation: the teacher, trained beside this run on the same batches (its method is ce);
    # its on_epoch sees the teacher's metrics, before this run's
    co_teacher: "RunRequest | None" = None


class CoTrainedTeacher:
    """A teacher that is itself a run in training: each call is one training step of that run on the
    batch, and returns the logits of that step's forward (detached, so the student never pushes it)."""

    def __init__(self, run: "Run") -> None:
        self.run = run

    def __call__(self, batch) -> torch.Tensor:
        return self.run.runner.step(batch, None)

    def to(self, device: torch.device, *, channels_last: bool | None = None, bf16: bool | None = None):
        return self  # the teacher run keeps its own device, layout and precision

    def for_run(self, data_identity: str, loader: DeviceLoader) -> "CoTrainedTeacher":
        return self

    def compiled(self) -> "CoTrainedTeacher":
        return self  # the teacher run compiles its own forward (same accel as the student)


class Run:
    """One run's state (model, optimizer, schedule, EMA, history), its epochs driven from outside.

    :func:`train` drives one run; ``kdsweep.core.packing.train_group`` drives several on the same
    batches. ``loaders`` (train, test, validation or None) lets runs of one group share the loaders.
    A request with a ``co_teacher`` holds that teacher's run as ``co``: it steps inside this run's
    steps, is evaluated and checkpointed with it, and stops when this run stops.
    """

    def __init__(self, req: RunRequest, data: ImageSet, *, loaders: tuple | None = None,
                 allow_graph: bool = True) -> None:
        cfg, teacher, model = req.cfg, req.teacher, req.model
        if cfg.distills and teacher is None and req.co_teacher is None:
            raise ValueError(f"method {cfg.method!r} needs a teacher")
        self.cfg, self.on_epoch, self.checkpoint_path = cfg, req.on_epoch, req.checkpoint_path
        # a data-parallel run (core/distributed.py): this process's rank, its own GPU on CUDA
        self.ranks = ranks = distributed.current() if loaders is None and req.co_teacher is None else None
        device = self.device = resolve_device(distributed.rank_device(cfg.device, ranks) if ranks else cfg.device)
        self.autocast = autocast_for(cfg, device)

        with _INIT_LOCK:  # trials in threads: the global RNG must not interleave between seed and init
            torch.manual_seed(cfg.seed)
            if model is None:
                model = build_model(cfg.arch, num_classes=data.num_classes, width=cfg.width, arch_args=cfg.arch_kwargs)
                if cfg.init:  # teacher.init: start from a weights file (a re-created head keeps this fresh init)
                    from kdsweep.core.weights import load_init

                    load_init(model, cfg.init, cfg.arch)
        model.to(device)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else use_channels_last(model, device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if teacher is not None:  # the teacher's own layout unless the config fixes one, and its precision
            teacher.to(device, channels_last=cfg.channels_last, bf16=teacher_bf16(cfg.precision, device))
        self.model = model

        if loaders is None and data.loader == "stream":  # data larger than memory (kdsweep.core.stream)
            from kdsweep.core.stream import stream_loaders

            loaders = stream_loaders(cfg, data, device, channels_last=self.channels_last)
            if ranks is not None:
                loaders[0].shard = (ranks.rank, ranks.world)
        if loaders is None:
            common = dict(device=device, mean=data.mean, std=data.std, channels_last=self.channels_last,
                          resize=data.input_size)
            train_loader = DeviceLoader(
                data.train_x, data.train_y, batch_size=cfg.batch_size, train=True, seed=cfg.seed,
                pad=4 if cfg.augment else 0, flip=cfg.augment, **common,
                shard=(ranks.rank, ranks.world) if ranks else None,
            )
            # big evaluation batches on a GPU: fewer launches per epoch-end evaluation
            eval_batch = max(cfg.batch_size, 2048 if device.type == "cuda" else 512)
            test_loader = DeviceLoader(data.test_x, data.test_y, batch_size=eval_batch, train=False, **common)
            val_loader = (DeviceLoader(data.val_x, data.val_y, batch_size=eval_batch, train=False, **common)
                          if data.has_val else None)
            loaders = (train_loader, test_loader, val_loader)
        self.loaders = loaders
        train_loader, self.test_loader, self.val_loader = loaders
        self.co: Run | None = None
        if req.co_teacher is not None:
            check_pair(cfg, req.co_teacher.cfg)
            self.co = Run(req.co_teacher, data, loaders=loaders, allow_graph=False)
            teacher = CoTrainedTeacher(self.co)
            allow_graph = False  # the teacher's steps are driven eagerly from inside the student's
        elif teacher is not None:
            teacher = teacher.for_run(data.identity, train_loader)  # a logit table only where it covers these batches
            if hasattr(teacher, "train_loader"):  # stored soft labels (core/soft_labels.py): replay their crops
                if not LOSSES.get(cfg.method).top_k_labels:
                    raise KdsweepError(f"method {cfg.method!r} reads every teacher logit; stored top-k soft labels "
                                       "serve methods that accept them (kd)")
                train_loader = teacher.train_loader(train_loader)
                allow_graph = False
        steps = len(train_loader)
        if steps == 0:
            raise KdsweepError(
                f"batch_size={cfg.batch_size} is larger than the {len(data.train_y)} training images"
            )
        self.ema = ema = None
        if cfg.ema_decay > 0:  # copied before any feature hooks go on the student: the EMA model carries none
            self.ema = ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.features: FeatureDistiller | None = None
        method = LOSSES.get(cfg.method)
        if method.taps:  # a feature method: taps, a running teacher and the method's connector
            if self.co is not None:
                raise KdsweepError(f"method {cfg.method!r} reads features: it needs a pretrained teacher, "
                                   "not one trained beside the student")
            self.features = FeatureDistiller(
                method, dict(cfg.method_params), model, teacher, image_shape=tuple(train_loader.x.shape[1:]),
                labels=train_loader.y, device=device, seed=cfg.seed, student_layers=cfg.student_features,
                teacher_layers=cfg.teacher_features, channels_last=cfg.channels_last)
            allow_graph = False
        connector = self.features.connector if self.features is not None else None

        self.opt = opt = make_optimizer(cfg, model, device, connector)
        self.sched = sched = make_schedule(cfg, opt, steps)

        self.history: list[EpochMetrics] = []
        self.best, self.bad_epochs, self.start_epoch = -1.0, 0, 0
        if self.checkpoint_path is not None and Path(self.checkpoint_path).exists():
            saved = load_checkpoint(self.checkpoint_path, map_location=device)
            if _same_config(saved, cfg) and (self.co is None or _same_config(saved.get("co"), self.co.cfg)):
                self._restore(saved)
                if self.co is not None:
                    self.co._restore(saved["co"])

        allow_graph = allow_graph and isinstance(train_loader, DeviceLoader)  # a graph replays resident draws
        self.runner = StepRunner(cfg, model, opt, sched, lambda o: make_schedule(cfg, o, steps), ema, train_loader,
                                 teacher, accel=req.accel, allow_graph=allow_graph and ranks is None,
                                 features=self.features)
        if ranks is not None:  # gradients averaged over the processes after each backward
            from torch.nn.parallel import DistributedDataParallel

            self.runner.forward = DistributedDataParallel(
                self.runner.forward, device_ids=[device.index] if device.type == "cuda" else None)
        self.stopped_early = bool(cfg.patience and self.bad_epochs >= cfg.patience)
        self.next_epoch = self.start_epoch
        model.train()

    def _restore(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        if self.features is not None and self.features.connector is not None:
            self.features.connector.load_state_dict(saved["connector"])
        if self.ema is not None and saved["ema"] is not None:
            self.ema.load_state_dict(saved["ema"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.history = [EpochMetrics(**m) for m in saved["history"]]
        self.best, self.bad_epochs, self.start_epoch = saved["best"], saved["bad_epochs"], saved["epoch"]
        self.next_epoch = self.start_epoch

    def state(self) -> dict:
        """Everything a rerun needs to continue this run (and its co-trained teacher) after the last epoch."""
        return {
            "config": self.cfg.as_params(), "epoch": self.next_epoch, "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "history": [asdict(m) for m in self.history], "best": self.best, "bad_epochs": self.bad_epochs,
            "co": self.co.state() if self.co is not None else None,
            **({"connector": self.features.connector.state_dict()}
               if self.features is not None and self.features.connector is not None else {}),
        }

    @property
    def done(self) -> bool:
        return self.stopped_early or self.next_epoch >= self.cfg.epochs

    def begin_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` of steps driven from outside (a packed group), the co-trained teacher's too."""
        if self.co is not None:
            self.co.runner.begin_epoch(epoch)
        self.runner.begin_epoch(epoch)

    def run_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Train epoch ``epoch`` of this run alone (eager or graph steps), the co-trained teacher's steps included."""
        if self.co is not None:
            self.co.runner.begin_epoch(epoch)
        return self.runner.run_epoch(epoch)

    def finish_epoch(self, epoch: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, t0: float,
                     train_seconds: float | None = None) -> EpochMetrics:
        """Close epoch ``epoch`` (0-based): evaluate, record, checkpoint, call ``on_epoch``.

        ``train_seconds`` is the epoch's training time when the caller measured it (a group's
        shared epoch); otherwise it is taken here, after the epoch's one host sync. A co-trained
        teacher's epoch is closed first, both go into one checkpoint, and its ``on_epoch`` runs first.
        """
        if train_seconds is None:
            train_seconds = time.perf_counter() - t0
        if self.ranks is not None:
            return self._finish_shared(epoch, loss_sum, correct, seen, t0, train_seconds)
        co_metrics = None
        if self.co is not None:
            r = self.co.runner
            co_metrics = self.co._close(epoch, r.loss_sum, r.correct, seen, t0, train_seconds, who="online teacher ")
        metrics = self._close(epoch, loss_sum, correct, seen, t0, train_seconds)
        if self.checkpoint_path is not None:
            save_checkpoint(self.state(), Path(self.checkpoint_path))
        if self.cfg.patience and self.bad_epochs >= self.cfg.patience:
            self.stopped_early = True
        if co_metrics is not None and self.co.on_epoch is not None:
            self.co.on_epoch(co_metrics)
        if self.on_epoch is not None:
            self.on_epoch(metrics)
        return metrics

    def _finish_shared(self, epoch: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, t0: float,
                       train_seconds: float) -> EpochMetrics | None:
        """``finish_epoch`` of a data-parallel run: sums over the processes, rank 0's buffers, and only
        rank 0 evaluates, checkpoints and calls ``on_epoch``; its go-on-or-stop reaches every process."""
        seen_t = torch.tensor(float(seen), device=self.device)
        distributed.sum_over_ranks(loss_sum, correct, seen_t, *self.runner.term_sums.values())
        distributed.broadcast_buffers(self.model)
        seen = int(seen_t.item())
        if not self.ranks.main:
            self.next_epoch = epoch + 1
            self.stopped_early = distributed.broadcast_flag(False, self.device)
            return None
        try:
            metrics = self._close(epoch, loss_sum, correct, seen, t0, train_seconds)
            if self.checkpoint_path is not None:
                save_checkpoint(self.state(), Path(self.checkpoint_path))
            if self.cfg.patience and self.bad_epochs >= self.cfg.patience:
                self.stopped_early = True
            if self.on_epoch is not None:
                self.on_epoch(metrics)
        except BaseException:  # pruned, diverged, interrupted: the other processes stop too
            with contextlib.suppress(Exception):
                distributed.broadcast_flag(True, self.device)
            raise
        distributed.broadcast_flag(self.stopped_early or self.next_epoch >= self.cfg.epochs, self.device)
        return metrics

    def _close(self, epoch: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, t0: float,
               train_seconds: float | None, who: str = "") -> EpochMetrics:
        cfg = self.cfg
        train_loss = loss_sum.item() / seen  # the epoch's one host sync
        if train_seconds is None:
            train_seconds = time.perf_counter() - t0
        self.next_epoch = epoch + 1
        if not math.isfinite(train_loss):
            raise DivergedError(f"{who}training loss became {train_loss} in epoch {epoch + 1} (lr={cfg.lr})")
        terms = {name: t.item() / seen for name, t in self.runner.term_sums.items()}
        eval_start = time.perf_counter()
        test_acc = evaluate(self.model, self.test_loader, self.autocast)
        test_acc_ema = evaluate(self.ema.module, self.test_loader, self.autocast) if self.ema is not None else None
        val_acc = val_acc_ema = None
        if self.val_loader is not None:
            val_acc = evaluate(self.model, self.val_loader, self.autocast)
            val_acc_ema = evaluate(self.ema.module, self.val_loader, self.autocast) if self.ema is not None else None
        metrics = EpochMetrics(
            epoch=epoch + 1, train_loss=train_loss, train_acc=correct.item() / seen, test_acc=test_acc,
            test_acc_ema=test_acc_ema, lr=self.sched.get_last_lr()[0],
            epoch_seconds=train_seconds + time.perf_counter() - eval_start, images_per_second=seen / train_seconds,
            loss_terms=terms, val_acc=val_acc, val_acc_ema=val_acc_ema,
        )
        self.history.append(metrics)
        if metrics.score > self.best:
            self.best, self.bad_epochs = metrics.score, 0
        else:
            self.bad_epochs += 1
        return metrics

    def to_end(self) -> TrainResult:
        """Train this run alone, epoch after epoch (eager or graph steps), and return its result."""
        while not self.done:
            epoch = self.next_epoch
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()  # this run's stream only: trials may share the GPU
            t0 = time.perf_counter()
            loss_sum, correct, seen = self.run_epoch(epoch)
            self.finish_epoch(epoch, loss_sum, correct, seen, t0)
        return self.result()

    def result(self) -> TrainResult:
        extras = {"cuda_graph": float(self.runner.graph is not None)}
        if self.features is not None:  # the student leaves without hooks; the connector stays behind
            self.features.close()
            extras["connector_params"] = float(self.features.connector_params)
        return TrainResult(
            model=self.model, ema_model=self.ema, history=self.history, num_params=count_params(self.model),
            stopped_early=self.stopped_early, resumed_from_epoch=self.start_epoch,
            extras=extras,
            co_teacher=self.co.result() if self.co is not None else None,
        )


# what a co-trained teacher and its student share: they step on the same batches for the same epochs
PAIR_SHARED = ("epochs", "batch_size", "augment", "seed", "device", "precision")


def check_pair(student: TrainConfig, teacher: TrainConfig) -> None:
    """Both configs of an online pair must agree on what they share; ValueError names the first mismatch."""
    for name in PAIR_SHARED:
        if getattr(student, name) != getattr(teacher, name):
            raise ValueError(f"online distillation needs the same {name} for teacher and student, got "
                             f"teacher {getattr(teacher, name)!r} and student {getattr(student, name)!r}")
    if teacher.distills:
        raise ValueError(f"the online teacher learns from labels only; its method must be ce, got {teacher.method!r}")


def train(
    cfg: TrainConfig,
    data: ImageSet,
    *,
    teacher: TeacherSource | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    checkpoint_path: Path | None = None,
    model: nn.Module | None = None,
    accel: str = "auto",
    co_teacher: RunRequest | None = None,
) -> TrainResult:
    """Train ``cfg.arch`` on ``data``; distil from ``teacher`` when the config's method needs one.

    ``on_epoch`` is called after each epoch (after the checkpoint is written); it may raise to
    stop the run (Optuna pruning raises TrialPruned through here untouched).
    ``accel`` picks how steps run (kdsweep.core.step): ``auto`` captures each step as a CUDA graph
    on CUDA and runs eagerly elsewhere; ``eager``, ``graph`` and ``compile`` force a mode.
    ``co_teacher`` trains a teacher beside the student on the same batches (online distillation);
    its result is the returned result's ``co_teacher``.
    """
    return Run(RunRequest(cfg, teacher, on_epoch, checkpoint_path, model, accel, co_teacher), data).to_end()


def evaluate_split(model: nn.Module, data: ImageSet, *, device: str = "cpu",
                   batch_size: int = 512) -> tuple[float, float, float | None]:
    """(train accuracy without augmentation, test accuracy, validation accuracy or None) of a trained model."""
    dev = resolve_device(device)
    model.to(dev)
    common = dict(batch_size=batch_size, device=dev, mean=data.mean, std=data.std, train=False)
    autocast = contextlib.nullcontext if dev.type == "cpu" else (lambda: torch.autocast(dev.type, dtype=torch.bfloat16))
    if data.loader == "stream":  # data larger than memory (kdsweep.core.stream)
        from kdsweep.core.stream import StreamLoader

        # decoded per batch at full size: a smaller batch keeps the peak memory near training's
        stream = {**common, "batch_size": min(batch_size, 64)}
        loaders = [StreamLoader(items, data.options, **stream) for items in (data.train, data.test, data.val)
                   if items is not None and len(items)]
    else:
        loaders = [DeviceLoader(x, y, resize=data.input_size, **common) for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y),
                                                             (data.val_x, data.val_y)) if y is not None and len(y)]
    train_acc = evaluate(model, loaders[0], autocast)
    test_acc = evaluate(model, loaders[1], autocast)
    val_acc = evaluate(model, loaders[2], autocast) if data.has_val else None
    return train_acc, test_acc, val_acc
