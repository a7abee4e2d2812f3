"""Tests for kdsweep.core.models: every name builds, widths shrink, sizes match the papers."""

from __future__ import annotations

import pytest
import torch

from kdsweep.core.models import MODELS, build_model, count_params

# The shipped models, listed here rather than read from MODELS: other test modules register
# test-only models into the same registry at import time.
ALL_NAMES = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet18", "torchvision_resnet18", "teachernet12", "cnn_teacher", "cnn_student", "cnn5",
]
# torchvision_resnet18 has a fixed width, so width tests skip it.
SCALABLE = [n for n in ALL_NAMES if n != "torchvision_resnet18"]


def test_expected_names_registered() -> None:
    assert set(ALL_NAMES) <= set(MODELS.names())


@pytest.mark.parametrize("name", ALL_NAMES)
def test_forward_shape(name: str) -> None:
    if name == "torchvision_resnet18":
        pytest.importorskip("torchvision")
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", SCALABLE)
def test_half_width_has_fewer_params(name: str) -> None:
    full = count_params(build_model(name, num_classes=10))
    half = count_params(build_model(name, num_classes=10, width=0.5))
    assert half < full


def test_width_scales_cifar_resnet_channels() -> None:
    # x0.5 halves 16/32/64 to 8/16/32; x0.25 gives 4/8/16.
    for width, expected in [(0.5, 32), (0.25, 16)]:
        model = build_model("resnet20", num_classes=10, width=width)
        assert model.fc.in_features == expected
        assert model.stem[0].out_channels == expected // 4


def test_tiny_width_keeps_one_channel() -> None:
    model = build_model("teachernet12", num_classes=3, width=0.01)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize(
    ("name", "expected", "rel_tol"),
    [
        ("resnet20", 0.27e6, 0.03),  # He et al. 2016 Table 6: 0.27M
        ("resnet56", 0.85e6, 0.03),  # He et al. 2016 Table 6: 0.85M
        ("resnet18", 11.17e6, 0.01),  # kuangliu/pytorch-cifar: 11,173,962
        ("cnn_teacher", 730e3, 0.05),
        ("cnn_student", 230e3, 0.05),
    ],
)
def test_param_counts(name: str, expected: float, rel_tol: float) -> None:
    n = count_params(build_model(name, num_classes=10))
    print(f"{name}: {n:,} params")  # shown with pytest -s, for the README table
    assert n == pytest.approx(expected, rel=rel_tol)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet21'.*resnet20"):
        build_model("resnet21", num_classes=10)


@pytest.mark.parametrize("width", [0.0, -0.5, float("nan")])
@pytest.mark.parametrize("name", ["resnet20", "resnet18", "cnn5", "teachernet12", "cnn_teacher"])
def test_bad_width_raises(name: str, width: float) -> None:
    with pytest.raises(ValueError, match="width"):
        build_model(name, num_classes=10, width=width)


def test_torchvision_resnet18_refuses_width() -> None:
    # Raised before torchvision is imported, so no importorskip needed.
    with pytest.raises(ValueError, match=r"0\.5"):
        build_model("torchvision_resnet18", num_classes=10, width=0.5)


@pytest.mark.parametrize("name", ["cnn5", "resnet20", "cnn_student"])
def test_larger_inputs(name: str) -> None:
    # Image-folder data is not 32px; adaptive pooling should make size irrelevant.
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_in_channels() -> None:
    model = build_model("resnet8", num_classes=4, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_channels_last_and_bf16_autocast() -> None:
    model = build_model("resnet8", num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert out.shape == (2, 10)
    assert torch.isfinite(out.float()).all()
