"""Features by layer name: defaults per family, hooks, the layer table, and the one-line errors."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from kdsweep.cli import main
from kdsweep.core.models import build_model
from kdsweep.core.taps import FeatureError, FeatureTap, check_layers, default_stages, embedding_layer, layer_table


@pytest.mark.parametrize("arch,stages,shapes", [
    ("resnet8", ["layers.0", "layers.1", "layers.2"], [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("resnet20", ["layers.2", "layers.5", "layers.8"], [(16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    ("resnet18", ["layers.1", "layers.3", "layers.5", "layers.7"], [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    ("cnn_student", ["features.5", "features.12", "features.19", "features.26"],
     [(24, 32, 32), (32, 16, 16), (64, 8, 8), (96, 4, 4)]),
    ("torchvision_resnet18", ["layer1", "layer2", "layer3", "layer4"], [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]),
])
def test_each_family_declares_its_stage_outputs(arch, stages, shapes):
    net = build_model(arch, num_classes=10)
    assert default_stages(net) == stages
    table = dict(layer_table(net, 32))
    assert [table[s] for s in stages] == shapes  # each stage ends where the next halves the map


def test_timm_models_use_their_own_feature_info():
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    assert default_stages(net) == [d["module"] for d in net.feature_info]
    assert embedding_layer(net) == "fc"


def test_a_model_without_stages_asks_for_names():
    with pytest.raises(FeatureError, match=r"declares no feature stages; name its layers in student.features"):
        default_stages(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)))


def test_the_tap_holds_each_forwards_outputs_and_the_classifier_input():
    net = build_model("resnet8", num_classes=10).eval()
    tap = FeatureTap(net, ["layers.2", "layers.0"], embedding=True)
    x = torch.randn(2, 3, 16, 16)
    logits = net(x)
    body = net.layers[0](net.stem(x))
    torch.testing.assert_close(tap.stages[1], body)  # in the order asked for
    torch.testing.assert_close(logits, net.fc(tap.embedding))  # the embedding is the classifier's input
    assert tap.embedding.shape == (2, 64)
    tap.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_an_unknown_layer_names_the_model_and_the_closest_names():
    net = build_model("resnet14", num_classes=10)
    with pytest.raises(FeatureError, match=r"^student resnet14 has no layer 'layer.3'; closest: \['layers.3', "):
        check_layers(net, ["layers.1", "layer.3"], "student resnet14")


def test_models_features_prints_paths_shapes_and_the_defaults():
    out = CliRunner().invoke(main, ["models", "features", "resnet8", "--image-size", "16"])
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line.split()[1:] for line in out.output.splitlines()}
    assert rows["layers.1"] == ["32x8x8", "stage"] and rows["fc"] == ["10", "embedding"]
    assert rows["layers.1.conv1"] == ["32x8x8"]


@pytest.mark.parametrize("args,line", [
    (["resnet9"], "ARCH='resnet9': unknown architecture"),
    (["cnn5", "--image-size", "8"], "cnn5 at --image-size 8: "),
])
def test_models_features_refuses_in_one_line(args, line):
    out = CliRunner().invoke(main, ["models", "features", *args])
    assert out.exit_code == 2
    assert len(out.output.strip().splitlines()) == 1 and line in out.output


def test_the_spec_checks_feature_layers_in_one_line(tmp_path):
    from kdsweep.errors import SpecError
    from kdsweep.study.spec import load_spec

    spec = tmp_path / "s.yaml"
    spec.write_text("name: t\nteacher: {arch: resnet14, features: [layers.1, layerz.3]}\n"
                    "student: {arch: resnet8, method: kd}\nsearch: {method: {choices: [kd, at]}}\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    lines = [p for p in err.value.problems if "features" in p]
    assert lines == [f"{spec}: teacher.features: resnet14 has no layer 'layerz.3'; closest: ['layers.3', 'layers.5', "
                     "'layers.4'] (`kdsweep models features` lists them)"]


def test_a_feature_method_with_an_online_teacher_is_refused_at_validation():
    from pydantic import ValidationError

    from kdsweep.study.schema import StudySpec

    with pytest.raises(ValidationError, match=r"method 'kd\+at' reads the teacher's features: it needs teacher.mode: pretrained"):
        StudySpec.model_validate({"name": "t", "teacher": {"arch": "resnet8", "mode": "online"},
                                  "student": {"arch": "resnet8", "method": "kd+at"}})
