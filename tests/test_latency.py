"""core/latency: a student's milliseconds per image at batch 1 and images per second at batch 64."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from kdsweep.core.latency import BATCH_LATENCY, measure
from kdsweep.core.models import build_model


class Sleepy(nn.Module):
    """Takes ``seconds`` per forward whatever the batch: its latency and throughput are known."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.fc = seconds, nn.Linear(3, 10)
        self.calls, self.dtypes, self.training_seen = 0, set(), set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.training_seen.add(self.training)
        time.sleep(self.seconds)
        out = self.fc(x.mean(dim=(2, 3)))
        self.dtypes.add(out.dtype)
        return out


def test_latency_is_the_median_time_of_one_image_and_throughput_counts_the_batch():
    model = Sleepy(0.02)
    speed = measure(model, image_size=(8, 8), repeats=3, warmup=1, batch=16)
    # 20 ms a forward: one image takes >= 20 ms, a batch of 16 at most 16 / 0.02 = 800 images/s
    assert 20 <= speed.latency_ms < 200
    assert speed.throughput_ips <= 16 / 0.02
    assert model.calls == 2 * (3 + 1)  # warm-up and timed runs, at both batch sizes
    assert model.training_seen == {False}  # eval mode, as served
    assert speed.device and speed.precision == "fp32"


def test_bf16_precision_times_the_model_under_autocast():
    model = Sleepy(0.0)
    speed = measure(model, image_size=(8, 8), repeats=1, warmup=0, batch=2, bf16=True)
    assert speed.precision == "bf16" and model.dtypes == {torch.bfloat16}


def test_a_real_student_gives_finite_positive_numbers():
    speed = measure(build_model("resnet8", num_classes=10, width=0.25), image_size=(32, 32), repeats=2, batch=4)
    assert 0 < speed.latency_ms < 10_000 and speed.throughput_ips > 0
    assert speed.as_metrics() == {"latency_ms": speed.latency_ms, "throughput_ips": speed.throughput_ips}
    assert BATCH_LATENCY == 1


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"batch": 0}])
def test_bad_counts_raise_value_error_quoting_them(kwargs):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))}={next(iter(kwargs.values()))}"):
        measure(Sleepy(0.0), image_size=(8, 8), **kwargs)
