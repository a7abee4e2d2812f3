"""Which precision each part of a run computes in: the one policy, read by steps, teachers and tables.

Training steps run in bf16 autocast under ``precision: bf16``, or ``auto`` on CUDA. A frozen
teacher's forward also runs in bf16 under ``auto`` on a CPU that computes bf16 natively.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch


def uses_bf16(precision: str, device: torch.device) -> bool:
    """``precision`` ``bf16``, or ``auto`` on CUDA: the rule for training steps (see :func:`teacher_bf16`)."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated, and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def teacher_bf16(precision: str, device: torch.device) -> bool:
    """Whether a frozen teacher's forward (online or for a view table) runs under bf16 autocast.

    As the training step, and also under ``auto`` on a CPU with native bf16: there a resnet18
    x0.5 forward is 1.7-1.9x faster in bf16 than in channels_last fp32, while a small student's
    step (its backward included) gains nothing, so the student stays fp32
    (benchmarks/precision_probe.py, numbers in docs/PERFORMANCE.md).
    """
    return uses_bf16(precision, device) or (precision == "auto" and device.type == "cpu" and cpu_has_native_bf16())


def bf16_autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on ``device``, the one way kdsweep enters it (training steps, teachers, tables)."""
    # no weight-cast cache: it must be off under graph capture, and one forward per region gains nothing
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


def autocast_for(cfg, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The bf16 autocast context of this run, or a no-op one."""
    if not uses_bf16(cfg.precision, device):
        return contextlib.nullcontext
    return lambda: bf16_autocast(device)
