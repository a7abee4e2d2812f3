"""Several students trained in one loop on the same batches, sharing each batch's teacher output.

A study's trials differ in temperature, alpha, EMA decay, learning rate and width, but a trial's
batches depend only on its seed (``DeviceLoader.draws`` is a function of seed and epoch). So the
runs of one seed see the very same batches whether they train one after another or together,
and together they need one teacher forward (or one table lookup) per batch instead of one per
run. On the CPU the teacher's forward is most of a KD step, so K packed students cost about
``teacher + K * student`` instead of ``K * (teacher + student)``.

Every run keeps its own model, optimizer, schedule, EMA, checkpoint and ``on_epoch``: each
learns exactly what it would learn alone (bit for bit on the CPU, where kernels are
deterministic; ``tests/test_packing.py``). A run that fails, diverges or is pruned (its
``on_epoch`` raises) leaves the group; the others go on. Runs may start at different epochs (a
resumed one) and end at different ones (early stopping, fewer epochs).

Steps of a packed group run eagerly: a CUDA graph covers one run (``kdsweep.core.step``), so on
CUDA with ``accel`` graph or auto each run is trained alone (see :func:`pack_key`). So is a run of a
feature method (``Method.taps``): its teacher forward carries that run's own taps.
"""

from __future__ import annotations

import time

import torch

from kdsweep.core.data import ImageSet
from kdsweep.core.layout import use_channels_last
from kdsweep.core.methods import LOSSES
from kdsweep.core.models import build_model
from kdsweep.core.precision import uses_bf16
from kdsweep.core.step import resolve_accel
from kdsweep.core.trainer import Run, RunRequest, TrainResult, resolve_device


CO_TRAINED = "co-trained"  # pack_key's teacher entry for a run with a teacher trained beside it


def pack_key(req: RunRequest, data: ImageSet) -> tuple | None:
    """What must be equal for runs to share one loop (batches, layout, precision); None: train alone.

    The last entry is the teacher (None for a run without KD); see :func:`can_pack`. Runs that a
    CUDA graph would capture are not packed: one run per graph.
    """
    cfg = req.cfg
    device = resolve_device(cfg.device)
    if resolve_accel(req.accel, device)[1]:
        return None
    if LOSSES.get(cfg.method).taps:  # a feature method runs its own teacher copy with taps: trained alone
        return None
    if cfg.channels_last is not None:
        layout = cfg.channels_last
    else:
        try:
            with torch.device("meta"):  # the layout rule reads conv widths only: no weights needed
                net = build_model(cfg.arch, num_classes=data.num_classes, width=cfg.width, arch_args=cfg.arch_kwargs)
        except Exception:  # a model that cannot be built without weights: train it alone
            return None
        layout = use_channels_last(net, device)
    # a co-trained teacher is the run's own (it steps inside the run's step): it shares with nobody
    teacher = CO_TRAINED if req.co_teacher is not None else id(req.teacher) if cfg.distills else None
    return (data.identity, cfg.seed, cfg.batch_size, cfg.augment, str(device), uses_bf16(cfg.precision, device),
            layout, teacher)


def can_pack(keys: list[tuple | None]) -> bool:
    """Whether runs with these :func:`pack_key` values can share a loop: equal keys, one teacher at most."""
    if len(keys) <= 1:
        return True
    if any(k is None for k in keys) or len({k[:-1] for k in keys}) != 1:  # type: ignore[index]
        return False
    return len({k[-1] for k in keys if k[-1] not in (None, CO_TRAINED)}) <= 1  # type: ignore[index]


def train_group(requests: list[RunRequest], data: ImageSet) -> list[TrainResult | Exception]:
    """Train every request on the same batches; each entry is that run's result or the exception that ended it.

    The requests must be able to share a loop (:func:`can_pack`; a ``ValueError`` otherwise). One
    request is trained as :func:`kdsweep.core.trainer.train` trains it. ``KeyboardInterrupt`` and other
    non-``Exception`` errors stop the whole group and propagate.
    """
    if not can_pack([pack_key(r, data) for r in requests]):
        raise ValueError(f"these {len(requests)} runs cannot share batches (pack keys differ or need CUDA graphs)")
    outcomes: list[TrainResult | Exception | None] = [None] * len(requests)
    if len(requests) == 1:  # alone: the run's own loop, graph capture included
        try:
            outcomes[0] = Run(requests[0], data).to_end()
        except Exception as exc:
            outcomes[0] = exc
        return outcomes  # type: ignore[return-value]

    runs: dict[int, Run] = {}
    loaders = None
    for i, req in enumerate(requests):
        try:
            runs[i] = Run(req, data, loaders=loaders, allow_graph=False)
            loaders = runs[i].loaders
        except Exception as exc:
            outcomes[i] = exc
    if runs:
        _run_epochs(runs, outcomes)
    for i, run in runs.items():
        if outcomes[i] is None:
            outcomes[i] = run.result()
    return outcomes  # type: ignore[return-value]


def _run_epochs(runs: dict[int, Run], outcomes: list) -> None:
    first = next(iter(runs.values()))
    loader, device = first.runner.loader, first.device
    last = max(r.cfg.epochs for r in runs.values())
    for epoch in range(min(r.next_epoch for r in runs.values()), last):
        active = {i: r for i, r in runs.items() if outcomes[i] is None and not r.done and r.next_epoch == epoch}
        if not active:
            continue
        for r in active.values():
            r.begin_epoch(epoch)
        # a frozen teacher is the same object for every run that has one (pack_key); a table covers all
        # or none of them. A co-trained teacher steps inside its own run's step (logits None below).
        teacher = next((r.runner.teacher for r in active.values() if r.cfg.distills and r.co is None), None)
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        t0 = time.perf_counter()
        seen = 0
        for batch in loader.epoch(epoch):
            logits = None
            if teacher is not None:
                logits = teacher(batch)  # in the teacher's own precision
            for i, r in list(active.items()):
                try:
                    r.runner.step(batch, logits if r.co is None else None)
                except Exception as exc:  # a model bug or out of memory in one run ends that run only
                    outcomes[i] = exc
                    del active[i]
            seen += batch.y.numel()
            if not active:
                break
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        train_seconds = time.perf_counter() - t0
        for i, r in active.items():
            try:
                r.finish_epoch(epoch, r.runner.loss_sum, r.runner.correct, seen, t0, train_seconds)
            except Exception as exc:  # diverged, or pruned/stopped by its on_epoch
                outcomes[i] = exc
