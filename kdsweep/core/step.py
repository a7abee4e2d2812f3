"""The training step, run eagerly or replayed from one captured CUDA graph.

Eager (any device) is the plain loop: the loader's batches, the teacher, the student's forward
and backward, the optimizer, the host-side learning-rate scheduler, EMA.

A small student on a big GPU is launch-bound: a resnet20 step is a few hundred kernels of a few
microseconds each, and the host cannot queue them as fast as the GPU runs them. ``graph`` mode
(CUDA only) captures the whole step once, batch gather and augmentation included, into a CUDA
graph and replays it: one launch per step. What changes between replays lives in device tensors
the graph reads: the epoch's draws (copied in place each epoch), a step counter that picks the
batch positions, and the learning rate, looked up in a table of every step's rate that is made
by running the trainer's own scheduler ahead of time (so the rates are the ones the eager loop
would use). The host scheduler is advanced at the end of each epoch, so checkpoints and metrics
look exactly as in eager mode. ``compile`` adds ``torch.compile`` (kernel fusion) for the
student and an online teacher, under the same graph on CUDA.

The first ``warmup`` steps run eagerly on a side stream (allocations, cuDNN and compile
warm-up, the optimizer's momentum buffers, EMA's first copy); they are real training steps.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import warnings
from typing import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from kdsweep.core.config import TrainConfig
from kdsweep.core.loader import DeviceLoader, EpochDraws
from kdsweep.core.methods import LOSSES
from kdsweep.core.precision import autocast_for

ACCELS = ("auto", "eager", "graph", "compile")

# One capture at a time in a process: a capture's start synchronises the device and empties the
# allocator's cache, which would invalidate another thread's capture in flight. Not enough for
# trials in threads: on an H100 captures still failed while another thread trained (see
# docs/PERFORMANCE.md), so one process runs one trial at a time.
_CAPTURE_LOCK = threading.Lock()


def graph_blocker(cfg: TrainConfig, opt: torch.optim.Optimizer, ema: AveragedModel | None) -> str | None:
    """Why this run cannot be captured as a graph (None when it can)."""
    if not isinstance(opt, torch.optim.SGD) or not opt.defaults.get("fused"):
        return "graph mode needs the fused SGD optimizer (Adam's step counter and betas are host values)"
    if cfg.schedule == "onecycle":
        return "graph mode cannot follow one-cycle's per-step momentum"
    if ema is not None and (not ema.use_buffers or ema.multi_avg_fn is None):
        return "graph mode needs EMA with use_buffers=True and a multi_avg_fn"
    return None


def resolve_accel(accel: str, device: torch.device) -> tuple[bool, bool]:
    """``accel`` -> (compile, graph). ``auto`` is ``graph`` on CUDA and ``eager`` elsewhere.

    CUDA graphs exist on CUDA only: ``graph`` is eager and ``compile`` is compile-only elsewhere,
    so a study spec written for a GPU still runs on the CPU.
    """
    if accel not in ACCELS:
        raise ValueError(f"accel={accel!r}; choose from {list(ACCELS)}")
    cuda = device.type == "cuda"
    if accel == "auto":
        return False, cuda
    return accel == "compile", cuda and accel in ("graph", "compile")


def lr_table(opt: torch.optim.Optimizer, make_schedule: Callable[[torch.optim.Optimizer], object],
             total_steps: int) -> torch.Tensor:
    """Every step's learning rate per param group ``[total_steps, groups]``, from a dry run of the schedule."""
    dummy = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": g["initial_lr"]
                              if "initial_lr" in g else g["lr"]} for g in opt.param_groups])
    sched = make_schedule(dummy)
    rows = []
    for _ in range(total_steps):
        rows.append([float(g["lr"]) for g in dummy.param_groups])
        dummy.step()  # keeps the scheduler from warning about the call order
        sched.step()
    return torch.tensor(rows, dtype=torch.float32)


class StepRunner:
    """Runs the training steps of each epoch; sums loss and correct predictions on the device."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer, sched,
                 make_schedule: Callable[[torch.optim.Optimizer], object], ema: AveragedModel | None,
                 loader: DeviceLoader, teacher, *, accel: str = "auto", warmup: int = 3,
                 allow_graph: bool = True, features=None) -> None:
        self.cfg, self.model, self.opt, self.sched, self.ema, self.loader = cfg, model, opt, sched, ema, loader
        self.device = loader.device
        self.steps = len(loader)
        compile_, graph = resolve_accel(accel, self.device)
        # a feature method (kdsweep.core.feature_distiller) runs eagerly, without torch.compile: its
        # hooks hand tensors out through Python objects, which a graph or a compiled forward would not
        self.features = features
        if features is not None and (compile_ or graph) and accel != "auto":
            warnings.warn(f"accel={accel!r}: method {cfg.method!r} reads features and trains eagerly", stacklevel=2)
        if features is not None:
            compile_, graph = False, False
        self.blocker = graph_blocker(cfg, opt, ema) if graph else None
        # allow_graph=False: a packed group (kdsweep.core.packing) drives the steps eagerly
        self.graph_mode = graph and allow_graph and self.blocker is None
        if graph and not self.graph_mode and accel != "auto":  # asked for by name: say why not
            why = self.blocker or ("its steps are driven from outside, one batch for several nets "
                                   "(a packed group of trials, or an online teacher and its student)")
            warnings.warn(f"accel={accel!r}: this run trains without a CUDA graph: {why}", stacklevel=2)
        self.autocast = autocast_for(cfg, self.device)
        if self.device.type == "cuda":
            # every step has the same shapes: let cuDNN time its algorithms once, in the warm-up
            torch.backends.cudnn.benchmark = True
        # static shapes: every step has the same ones, and a dynamic-shape recompile would be slower
        self.forward = torch.compile(model, dynamic=False) if compile_ else model
        self.teacher = teacher
        if compile_ and teacher is not None:
            self.teacher = teacher.compiled()
        self.method = LOSSES.get(cfg.method)
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.term_sums: dict[str, torch.Tensor] = {}  # each named loss term, summed like loss_sum
        # the 1-based epoch being trained, as a device tensor: a captured graph reads it on replay
        self.epoch_t = torch.zeros((), dtype=torch.float32, device=self.device)
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self._warm = 0
        self._ema_ready = ema is not None and bool(ema.n_averaged.item() > 0)
        if self.graph_mode:
            bs = loader.batch_size
            self._arange = torch.arange(bs, device=self.device)
            self._k = torch.zeros((), dtype=torch.int64, device=self.device)  # step within the epoch
            self._g = torch.zeros((), dtype=torch.int64, device=self.device)  # step within the run
            total = cfg.epochs * self.steps
            self._lrs = lr_table(opt, make_schedule, total).to(self.device)
            self._lr_t = [torch.zeros((), dtype=torch.float32, device=self.device) for _ in opt.param_groups]
            self._draws: EpochDraws | None = None
            if ema is not None:
                pairs = list(zip(itertools.chain(ema.module.parameters(), ema.module.buffers()),
                                 itertools.chain(model.parameters(), model.buffers())))
                floats = [(a.detach(), b.detach()) for a, b in pairs if a.is_floating_point()]
                others = [(a.detach(), b.detach()) for a, b in pairs if not a.is_floating_point()]
                self._ema_groups = [list(zip(*grp)) for grp in (floats, others) if grp]

    # -- one step ------------------------------------------------------------------------------
    def _update(self, batch, teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        feats = None
        if self.features is not None:  # a feature method: the running teacher's logits and taps
            teacher_logits, feats = self.features.teacher(batch)
        elif self.method.needs_teacher and teacher_logits is None:
            teacher_logits = self.teacher(batch)  # a teacher runs in its own precision (core/precision.py)
        with self.autocast():
            logits = self.forward(batch.x)
        if feats is not None:
            feats = self.features.with_student(feats)
        loss, terms = self.method.loss(logits, batch.y, teacher_logits, cfg.method_params, self.epoch_t,
                                       label_smoothing=cfg.label_smoothing, feats=feats)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if not self.graph_mode:
            self.sched.step()
        if self.ema is not None:
            if self._ema_ready and self.graph_mode:
                self._ema_lerp()  # counted in n_averaged by run_epoch (the counter lives on the host)
            else:
                self.ema.update_parameters(self.model)
                self._ema_ready = True
        n = batch.y.numel()
        self.loss_sum += loss.detach() * n
        for name, value in terms.items():
            if name not in self.term_sums:  # first step (eager, before any capture)
                self.term_sums[name] = torch.zeros((), device=self.device)
            self.term_sums[name] += value.detach() * n
        logits = logits.detach()
        self.correct += (logits.argmax(1) == batch.y).sum()
        return logits

    @torch.no_grad()
    def _ema_lerp(self) -> None:
        # AveragedModel.update_parameters without its host-side `n_averaged == 0` test (a sync
        # that cannot be captured); the first update, a plain copy, ran eagerly in the warm-up
        for ema_list, model_list in self._ema_groups:
            self.ema.multi_avg_fn(list(ema_list), list(model_list), self.ema.n_averaged)

    def _graph_step(self) -> None:
        pos = self._k * self.loader.batch_size + self._arange
        lrs = torch.index_select(self._lrs, 0, self._g.view(1))[0]
        for i, t in enumerate(self._lr_t):
            t.copy_(lrs[i])
        self._update(self.loader.batch_at(self._draws, pos))
        self._k += 1
        self._g += 1

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        # thread_local: other trials may be running in other threads of this process
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._graph_step()
        self.graph = graph

    # -- steps driven from outside (a packed group: one batch and one teacher output for all) ----
    def _reset(self, epoch: int) -> None:
        if self.features is not None:
            self.features.begin_epoch(epoch, self.cfg.seed)
        self.loss_sum.zero_()
        self.correct.zero_()
        for t in self.term_sums.values():
            t.zero_()
        self.epoch_t.fill_(epoch + 1)

    def begin_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (0-based) of steps driven from outside (:meth:`step`)."""
        if self.graph_mode:
            raise RuntimeError("a graph-mode StepRunner runs whole epochs (run_epoch)")
        self._reset(epoch)

    def step(self, batch, teacher_logits: torch.Tensor | None) -> torch.Tensor:
        """One eager step on ``batch`` with the caller's ``teacher_logits`` (unused without KD).

        Returns this step's logits, detached (what a co-trained teacher hands its student)."""
        return self._update(batch, teacher_logits)

    # -- one epoch -----------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Train one epoch; returns (summed loss, correct predictions, images seen), unsynchronised."""
        self._reset(epoch)
        if not self.graph_mode:
            seen = 0
            for batch in self.loader.epoch(epoch):
                self._update(batch)
                seen += batch.y.numel()
            return self.loss_sum, self.correct, seen
        draws = self.loader.draws(epoch)
        if self._draws is None:
            self._draws = EpochDraws(*(t.clone() for t in (draws.order, draws.dx, draws.dy, draws.flips, draws.views)))
        else:
            self._draws.copy_(draws)
        self._k.zero_()
        self._g.fill_(epoch * self.steps)
        for group, t in zip(self.opt.param_groups, self._lr_t):
            group["lr"] = t  # the fused SGD kernel reads the rate from this device tensor
        stream = torch.cuda.current_stream(self.device)
        bs, seen = self.loader.batch_size, self.steps * self.loader.batch_size
        with _CAPTURE_LOCK if self.graph is None else contextlib.nullcontext():
            replays = self._graph_epoch(stream, bs, seen)
        if replays < 0:  # capture failed; the epoch was finished eagerly
            return self.loss_sum, self.correct, seen
        if self.ema is not None:
            self.ema.n_averaged += replays  # EMA updates done by the graph (and eager lerps)
        self._advance_scheduler(self.steps)
        return self.loss_sum, self.correct, seen

    def _graph_epoch(self, stream, bs: int, seen: int) -> int:
        replays = 0
        for done in range(self.steps):
            if self.graph is None and self._warm < self.warmup:
                lerped = self.ema is not None and self._ema_ready
                side = torch.cuda.Stream(self.device)
                side.wait_stream(stream)
                with torch.cuda.stream(side):
                    self._graph_step()
                stream.wait_stream(side)
                self._warm += 1
                replays += lerped
                continue
            if self.graph is None:
                try:
                    self._capture()
                except Exception as exc:  # a step that cannot be captured still trains, eagerly
                    if self.ema is not None:
                        self.ema.n_averaged += replays
                    self._fall_back(exc, done)
                    for start in range(done * bs, seen, bs):
                        self._update(self.loader.batch_at(self._draws, slice(start, start + bs)))
                    return -1
            self.graph.replay()
            replays += 1
        return replays

    def _advance_scheduler(self, steps: int) -> None:
        # keep the host scheduler (checkpoints, the lr metric, an eager resume) where eager mode has it
        for group, lr in zip(self.opt.param_groups, self.sched.get_last_lr()):
            group["lr"] = lr
        for _ in range(steps):
            self.sched.step()

    def _fall_back(self, exc: Exception, done: int) -> None:
        warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); training on eagerly",
                      RuntimeWarning, stacklevel=3)
        self.graph, self.graph_mode, self.blocker = None, False, f"capture failed: {exc}"
        self.opt.zero_grad(set_to_none=True)  # gradients may point into the abandoned capture's memory
        self._advance_scheduler(done)
