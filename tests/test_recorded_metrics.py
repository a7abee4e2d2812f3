"""The one training loop learns, bit for bit on this CPU, what the loops before it learnt.

``recorded/pre_refactor_metrics.json`` holds the per-epoch metrics of three small runs made with
the trainer before the KD methods registry and before online distillation went through the
same run machinery (``core/online.py``'s own loop): a baseline, a student distilled from a frozen
teacher, and an online pair (teacher and student trained together). Kernels can round
differently on another CPU kind, so there the comparison allows 1e-4; on the kind it was recorded
on (an Intel Xeon with AVX-512) it is exact. The kind is the vendor and torch's CPU capability:
an AMD EPYC with AVX-512 picks other kernels and differs in the 7th digit.
"""

import json
import re
from pathlib import Path

import pytest
import torch

from kdsweep.core.config import TrainConfig
from kdsweep.core.data import synthetic_imageset
from kdsweep.core.models import build_model
from kdsweep.core.teachers import OnlineTeacher
from kdsweep.core.trainer import Run, RunRequest, train

RECORDED = json.loads((Path(__file__).parent / "recorded" / "pre_refactor_metrics.json").read_text())
KEYS = ("epoch", "train_loss", "train_acc", "test_acc", "test_acc_ema", "lr")
BASE = dict(arch="resnet8", width=0.25, epochs=3, batch_size=32, lr=0.05, device="cpu", ema_decay=0.5, seed=3)


@pytest.fixture(scope="module")
def data():
    return synthetic_imageset(n_train=192, n_test=64, num_classes=4, size=16, seed=0)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded: a reduction split over threads can round differently
    yield
    torch.set_num_threads(before)


def cpu_kind() -> tuple[str, str]:
    """(vendor, capability) of this CPU, e.g. ("GenuineIntel", "AVX512")."""
    try:
        found = re.search(r"^vendor_id\s*:\s*(\S+)", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        found = None
    return (found.group(1) if found else "unknown", torch.backends.cpu.get_cpu_capability())


def history(result) -> list[dict]:
    return [{k: getattr(m, k) for k in KEYS} for m in result.history]


def assert_recorded(got: list[dict], name: str) -> None:
    want = RECORDED[name]
    if cpu_kind() == (RECORDED["cpu_vendor"], RECORDED["cpu_capability"]):
        assert got == want, name
    else:
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys()
            for k in g:
                assert g[k] == pytest.approx(w[k], abs=1e-4), (name, g["epoch"], k)


def test_baseline_is_unchanged(data):
    assert_recorded(history(train(TrainConfig(**BASE), data)), "baseline")


def test_distilled_from_a_frozen_teacher_is_unchanged(data):
    torch.manual_seed(1)
    teacher = OnlineTeacher(build_model("resnet8", num_classes=4, width=0.5), fold_bn=True)
    cfg = TrainConfig(**BASE, method="kd", method_params={"alpha": 0.9, "temperature": 4.0})
    result = train(cfg, data, teacher=teacher)
    assert_recorded(history(result), "distilled")
    # the logged terms add up to the loss the step minimised
    for m in result.history:
        assert sum(m.loss_terms.values()) == pytest.approx(m.train_loss, rel=1e-5)
        assert set(m.loss_terms) == {"kd", "ce"}


def test_online_pair_through_the_run_machinery_is_unchanged(data):
    student = TrainConfig(**BASE, method="kd", method_params={"alpha": 0.7, "temperature": 2.0})
    teacher = TrainConfig(arch="resnet8", width=0.5, epochs=3, batch_size=32, lr=0.05, device="cpu", seed=3)
    result = Run(RunRequest(student, co_teacher=RunRequest(teacher)), data).to_end()
    assert_recorded(history(result), "online_student")
    assert_recorded(history(result.co_teacher), "online_teacher")
