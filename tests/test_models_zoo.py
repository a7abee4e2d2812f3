"""The CIFAR-100 KD benchmark zoo: parameter counts equal to the reference code's, and every net trains.

The pinned counts are those of the same networks in HobbitLong/RepDistiller ``models/`` and
megvii-research/mdistiller ``mdistiller/models/cifar/`` (both give the same numbers), counted by
building the reference models at 100 and 10 classes.
"""

from __future__ import annotations

import pytest
import torch

from kdsweep.core.models import MODELS, build_model, count_params

# name: (trainable parameters at 100 classes, at 10 classes), and the reference's name for it
REFERENCE = {
    "resnet8x4": (1_233_540, 1_210_410, "resnet8x4"),
    "resnet32x4": (7_433_860, 7_410_730, "resnet32x4"),
    "wrn_16_1": (180_916, 175_066, "wrn_16_1"),
    "wrn_16_2": (703_284, 691_674, "wrn_16_2"),
    "wrn_40_1": (569_780, 563_930, "wrn_40_1"),
    "wrn_40_2": (2_255_156, 2_243_546, "wrn_40_2"),
    "vgg8": (3_965_028, 3_918_858, "vgg8_bn"),
    "vgg11": (9_277_284, 9_231_114, "vgg11_bn"),
    "vgg13": (9_462_180, 9_416_010, "vgg13_bn"),
    "vgg16": (14_774_436, 14_728_266, "vgg16_bn"),
    "vgg19": (20_086_692, 20_040_522, "vgg19_bn"),
    "resnet50": (23_705_252, 23_520_842, "ResNet50"),
    "mobilenetv2": (812_836, 697_546, "mobile_half"),
    "shufflenetv1": (949_258, 862_768, "ShuffleV1"),
    "shufflenetv2": (1_355_528, 1_263_278, "ShuffleV2"),
}
ZOO = list(REFERENCE)


@pytest.mark.parametrize("name", ZOO)
def test_hundred_class_count_equals_reference_and_forward_backward_runs(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=100)
    assert count_params(model) == REFERENCE[name][0]
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    torch.nn.functional.cross_entropy(out, torch.tensor([3, 97])).backward()
    # every trainable tensor is on the path from input to loss (no dead branch inflating the count)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


@pytest.mark.parametrize("name", ZOO)
def test_ten_class_count_equals_reference(name):
    with torch.device("meta"):  # shapes only: the count needs no weights
        assert count_params(build_model(name, num_classes=10)) == REFERENCE[name][1]


@pytest.mark.parametrize("name", ZOO)
def test_docstring_says_where_the_count_comes_from(name):
    doc = MODELS.get(name).__doc__
    count, _, reference_name = REFERENCE[name]
    assert f"{count:,}" in doc and "RepDistiller" in doc and "mdistiller" in doc and reference_name in doc


@pytest.mark.parametrize("width", [0.25, 0.7, 1.5])
@pytest.mark.parametrize("name", ZOO)
def test_width_scales_and_still_builds(name, width):
    # odd widths too: ShuffleNet's groups and halves must still divide the rounded channel counts
    with torch.device("meta"):
        full = count_params(build_model(name, num_classes=100))
        model = build_model(name, num_classes=100, width=width)
        assert (count_params(model) < full) == (width < 1)
        assert model(torch.empty(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"])
def test_other_input_sizes_and_channels(name):
    # global pooling at the end: 64px and single-channel inputs go through the same net
    model = build_model(name, num_classes=5, width=0.25, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize("name", ZOO)
def test_bad_width_raises(name):
    with pytest.raises(ValueError, match="width"):
        build_model(name, num_classes=10, width=0.0)
