"""How fast a student answers: milliseconds per image at batch 1, images per second at batch 64.

Measured the way a served model runs: eval mode, no autograd, in the precision it is served in
(fp32 for kdsweep's logged models, ``tracking/served_model.py``; ``bf16=True`` times bf16
autocast), in the layout the trainer runs it in (``core.layout``). Each figure is the median of ``repeats`` timed runs after ``warmup`` untimed
ones (the first calls pay for allocation and kernel selection); on CUDA the clock stops only
after a synchronise. A busy machine makes every number slower, so compare numbers taken
together; the device's name is kept beside them.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from kdsweep.core.layout import use_channels_last
from kdsweep.core.precision import bf16_autocast

BATCH_LATENCY = 1  # one image: what a request waits for
BATCH_THROUGHPUT = 64  # a full batch: what a server sustains


@dataclass(frozen=True)
class Latency:
    latency_ms: float  # median milliseconds for one image at batch 1
    throughput_ips: float  # median images per second at batch 64
    device: str  # the device's name (the CPU model or the GPU's name)
    precision: str  # fp32 or bf16

    def as_metrics(self) -> dict[str, float]:
        return {"latency_ms": self.latency_ms, "throughput_ips": self.throughput_ips}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (``lscpu``'s Model name on Linux)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or device.type


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(model: nn.Module, x: torch.Tensor, *, warmup: int, repeats: int, bf16: bool) -> float:
    device = x.device
    ctx = (lambda: bf16_autocast(device)) if bf16 else contextlib.nullcontext
    times = []
    with torch.inference_mode(), ctx():
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model: nn.Module, *, image_size: tuple[int, int], device: torch.device | str = "cpu",
            in_channels: int = 3, bf16: bool = False, warmup: int = 3, repeats: int = 10,
            batch: int = BATCH_THROUGHPUT) -> Latency:
    """Time ``model`` on random images of ``image_size``; see the module docstring.

    ``model`` is left in eval mode on ``device``. ``repeats`` and ``warmup`` are per batch size;
    ``batch`` is the throughput batch (64 unless a test wants a smaller one).
    """
    if repeats < 1 or warmup < 0 or batch < 1:
        raise ValueError(f"repeats={repeats!r} must be >= 1, warmup={warmup!r} >= 0, batch={batch!r} >= 1")
    device = torch.device(device)
    model = model.to(device).eval()
    fmt = torch.channels_last if use_channels_last(model, device) else torch.contiguous_format  # as the trainer
    model = model.to(memory_format=fmt)
    one = torch.randn(BATCH_LATENCY, in_channels, *image_size, device=device).to(memory_format=fmt)
    many = torch.randn(batch, in_channels, *image_size, device=device).to(memory_format=fmt)
    single = _median_seconds(model, one, warmup=warmup, repeats=repeats, bf16=bf16)
    full = _median_seconds(model, many, warmup=warmup, repeats=repeats, bf16=bf16)
    return Latency(latency_ms=1000.0 * single / BATCH_LATENCY, throughput_ips=batch / full,
                   device=device_name(device), precision="bf16" if bf16 else "fp32")
