"""The students' latency, measured once per study and arch (and width) on the study's device.

Every student a study can train is timed by ``core.latency`` before the first trial trains (a
continuous width range: when a trial first draws a width), while the device does nothing else.
The numbers go to each distilled run as metrics ``latency_ms`` and ``throughput_ips``, with the
device's name and precision as params, and to the trial (``latency_ms``), where a Pareto study
(``objective: [val_acc, latency_ms]``) minimises it.
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from kdsweep.core.data import ImageSet
from kdsweep.core.latency import Latency, measure
from kdsweep.core.models import build_model
from kdsweep.core.summary import RunSummary
from kdsweep.study import space
from kdsweep.study.preflight import input_size
from kdsweep.study.spec import StudySpec


class LatencyBook:
    """``of(arch, width)``: that student's :class:`Latency`, measured on first ask and kept."""

    def __init__(self, spec: StudySpec, data: ImageSet, device: str) -> None:
        self.spec, self.data, self.device = spec, data, torch.device(device)
        self._known: dict[tuple[str, float], Latency] = {}
        self._lock = threading.Lock()  # trials in threads (jobs > 1) ask at once

    def of(self, arch: str, width: float) -> Latency:
        key = (arch, float(width))
        with self._lock:
            if key not in self._known:
                model = build_model(arch, num_classes=self.data.num_classes, width=width,
                                    arch_args=space.arch_args_of(self.spec, arch))
                self._known[key] = measure(
                    model, image_size=input_size(self.data), in_channels=_channels(self.data),
                    device=self.device, bf16=False,  # as served: the logged model (tracking/served_model.py) runs fp32
                    repeats=self.spec.latency_repeats, warmup=min(3, self.spec.latency_repeats))
                del model
            return self._known[key]

    def measure_known(self) -> None:
        """Time every (arch, width) the trials can draw, when they are known in advance.

        A student that fails here (out of memory, a forward that raises) is left for its trials:
        each meets the same error and fails with its reason, and the study goes on with the others.
        """
        ws = space.widths(self.spec)
        keys = [(arch, space.FIXED_WIDTH) for arch in space.archs(self.spec) if not space.scales(arch)]
        keys += [(arch, w) for arch in space.archs(self.spec) if space.scales(arch) for w in (ws or ())]
        for arch, width in keys:
            try:
                self.of(arch, width)
            except Exception:  # noqa: BLE001 - the trial that draws it records the failure
                continue


def speed_params(speed: Latency) -> dict[str, str]:
    """What a run records beside its latency metrics: where and how they were measured."""
    return {"latency_device": speed.device, "latency_precision": speed.precision}


def with_speed(summary: RunSummary, speed: Latency) -> RunSummary:
    """``summary`` with the latency metrics added (logged with the run's final metrics)."""
    return dataclasses.replace(summary, extra={**summary.extra, **speed.as_metrics()})


def _channels(data) -> int:
    """Colour channels of the images (a streamed set decodes to RGB)."""
    return int(data.test_x.shape[1]) if data.loader == "resident" else 3
