"""Feature distillation on the CIFAR-100 zoo: every family's default stages resolve to 4-D maps, shallow
to deep, and a teacher and a student of different families pair up under each feature method.

The stage lists follow the reference code's feature lists (HobbitLong/RepDistiller, megvii-research/
mdistiller) after the stem: the CIFAR ResNets' and WRNs' stage outputs, ResNet-50's four, VGG's
blocks before each pool, MobileNetV2's last block at each resolution, the ShuffleNets' stage outputs.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from test_feature_distiller import FEATURE_METHODS, QUICK
from test_models_zoo import ZOO

from kdsweep.cli import main
from kdsweep.core.feature_distiller import FeatureDistiller
from kdsweep.core.loader import Batch
from kdsweep.core.methods import LOSSES
from kdsweep.core.models import build_model
from kdsweep.core.taps import FeatureTap, default_stages, embedding_layer
from kdsweep.core.teachers import OnlineTeacher

# arch: the default stages' (channels, side) at 32px, width 1 and 10 classes
STAGES = {
    "resnet8x4": [(64, 32), (128, 16), (256, 8)],
    "resnet32x4": [(64, 32), (128, 16), (256, 8)],
    "wrn_16_1": [(16, 32), (32, 16), (64, 8)],
    "wrn_16_2": [(32, 32), (64, 16), (128, 8)],
    "wrn_40_1": [(16, 32), (32, 16), (64, 8)],
    "wrn_40_2": [(32, 32), (64, 16), (128, 8)],
    "vgg8": [(64, 32), (128, 16), (256, 8), (512, 4)],
    "vgg11": [(64, 32), (128, 16), (256, 8), (512, 4)],
    "vgg13": [(64, 32), (128, 16), (256, 8), (512, 4)],
    "vgg16": [(64, 32), (128, 16), (256, 8), (512, 4)],
    "vgg19": [(64, 32), (128, 16), (256, 8), (512, 4)],
    "resnet50": [(256, 32), (512, 16), (1024, 8), (2048, 4)],
    "mobilenetv2": [(12, 16), (16, 8), (48, 4), (160, 2)],
    "shufflenetv1": [(240, 16), (480, 8), (960, 4)],
    "shufflenetv2": [(116, 16), (232, 8), (464, 4)],
    "torchvision_resnet18": [(64, 8), (128, 4), (256, 2), (512, 1)],
    "torchvision_resnet34": [(64, 8), (128, 4), (256, 2), (512, 1)],
}


def test_every_zoo_family_is_listed():
    assert set(ZOO) | {"torchvision_resnet18", "torchvision_resnet34"} == set(STAGES)


@pytest.mark.parametrize("arch", list(STAGES))
def test_default_stages_resolve_to_maps_of_increasing_depth(arch):
    torch.manual_seed(0)
    net = build_model(arch, num_classes=10)
    stages = default_stages(net)
    assert embedding_layer(net) == "fc"
    tap = FeatureTap(net, stages, embedding=True, who="student")
    modules = dict(net.named_modules())
    fired, at_hook = [], {}

    def record(path):
        def hook(module, args, output):
            fired.append(path)
            at_hook[path] = output.detach().clone()
        return hook

    extra = [modules[p].register_forward_hook(record(p)) for p in stages]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = net(x)  # train mode: BatchNorm on the batch's statistics, as in a training step
    feats = tap.stages
    assert [tuple(f.shape) for f in feats] == [(2, c, s, s) for c, s in STAGES[arch]]
    assert fired == stages  # declared shallow to deep: the forward reaches them in that order
    for (c0, s0), (c1, s1) in zip(STAGES[arch], STAGES[arch][1:]):
        assert s1 < s0 and c1 >= c0  # each stage downsamples, none narrows
    for path, f in zip(stages, feats):  # no later in-place op changed what the tap holds
        assert torch.equal(f, at_hook[path]), path
        assert torch.isfinite(f).all()
    torch.testing.assert_close(net.fc(tap.embedding), logits)  # the embedding is the classifier's input
    for h in extra:
        h.remove()
    tap.remove()


# ---- a teacher and a student of different families ---------------------------------------------

N_TRAIN, CLASSES = 8, 4


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_resnet32x4_teacher_pairs_with_a_shufflenetv2_student(method):
    # width 0.25: teacher stages 16@32, 32@16, 64@8 px; student stages 28@16, 58@8, 116@4 px and a
    # 1024-wide embedding: different depths of map at every paired stage, and different channels
    torch.manual_seed(0)
    teacher = OnlineTeacher(build_model("resnet32x4", num_classes=CLASSES, width=0.25))
    student = build_model("shufflenetv2", num_classes=CLASSES, width=0.25).train()
    m = LOSSES.get(method)
    params = m.resolve(QUICK.get(method, {}))
    labels = torch.arange(N_TRAIN) % CLASSES
    parts = FeatureDistiller(m, params, student, teacher, image_shape=(3, 32, 32), labels=labels,
                             device=torch.device("cpu"), seed=0, channels_last=False)
    try:
        shapes = parts.shapes
        if "stages" in m.taps:
            assert shapes.student == ((28, 16, 16), (58, 8, 8), (116, 4, 4))
            assert shapes.teacher == ((16, 32, 32), (32, 16, 16), (64, 8, 8))
        if "embedding" in m.taps:
            assert (shapes.student_embedding, shapes.teacher_embedding) == (1024, 64)
        assert (parts.connector is not None) == (method in ("fitnet", "crd", "reviewkd"))
        parts.begin_epoch(0, 0)

        index = torch.tensor([0, 1, 2, 3])
        batch = Batch(torch.randn(4, 3, 32, 32), labels[index], index, None)
        teacher_logits, feats = parts.teacher(batch)
        logits = student(batch.x)
        feats = parts.with_student(feats)
        loss, terms = m.loss(logits, batch.y, teacher_logits, params, 1.0, feats=feats)
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in terms.values())

        # the feature terms alone reach the student, down to its stem
        feature_terms = sum(v for k, v in terms.items() if k != "ce")
        assert feature_terms.item() > 0
        named = [(n, p) for n, p in student.named_parameters() if n != "fc.weight" and n != "fc.bias"]
        grads = torch.autograd.grad(feature_terms, [p for _, p in named], retain_graph=True, allow_unused=True)
        stem = dict(zip([n for n, _ in named], grads))["features.0.weight"]
        assert stem is not None and torch.isfinite(stem).all() and stem.abs().sum() > 0

        # one step of the student and its connector, as the trainer takes it
        trained = list(student.parameters()) + (list(parts.connector.parameters()) if parts.connector else [])
        opt = torch.optim.SGD(trained, lr=0.01)
        before = student.features[0].weight.detach().clone()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in trained)
        opt.step()
        assert not torch.equal(before, student.features[0].weight)
        assert not any(p.requires_grad for p in parts.teacher_net.parameters())
    finally:
        parts.close()
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in student.modules())


# ---- the CLI marks them --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet32x4", "vgg8", "mobilenetv2", "shufflenetv2"])
def test_models_features_marks_the_zoo_stages(arch):
    out = CliRunner().invoke(main, ["models", "features", arch])
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line.split()[1:] for line in out.output.splitlines()}
    marked = [path for path, cols in rows.items() if cols[-1:] == ["stage"]]
    assert marked == default_stages(build_model(arch, num_classes=10))
    assert [rows[p][0] for p in marked] == [f"{c}x{s}x{s}" for c, s in STAGES[arch]]
    assert rows["fc"] == ["10", "embedding"]
