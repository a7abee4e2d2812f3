"""Arch strings (core/models/sources.py): the forms, what each builds, its identity, and every bad
model input as a real ``study run``: exit 2, one line naming the arch, nothing created."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import write_spec
from kdsweep.cli import main
from kdsweep.core.config import TrainConfig
from kdsweep.core.models import ArchError, build_model, count_params, identity, parse_arch, scales_with_width
from kdsweep.core.models.sources import known_problem, resolve_arch
from kdsweep.core.trainer import evaluate_split
from kdsweep.study.runner import load_data
from kdsweep.study.spec import load_spec

TINY = """
from torch import nn


def tiny(num_classes, channels=8):
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def seven(num_classes):
    return tiny(7)


def not_a_module(num_classes):
    return [num_classes]


NOT_CALLABLE = 3
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("KDSWEEP_DATA_ROOT", raising=False)
    return work


def created(workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")
                  if p.name != "spec.yaml" and p.suffix not in (".py", ".pt", ".pth", ".safetensors"))


def nets_file(folder: Path, text: str = TINY, name: str = "mynets.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


# -- the forms ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,source,name,location", [
    ("resnet8", "builtin", "resnet8", ""),
    ("torchvision:mobilenet_v3_small", "torchvision", "mobilenet_v3_small", ""),
    ("timm:resnet18d", "timm", "resnet18d", ""),
    ("mynets.py:tiny", "file", "tiny", "mynets.py"),
    ("/abs/dir:with:colons/mynets.py:tiny", "file", "tiny", "/abs/dir:with:colons/mynets.py"),
    ("pkg.sub.mod:build", "module", "build", "pkg.sub.mod"),
    ("someplugin", "plugin", "someplugin", ""),
])
def test_each_form_parses_to_its_source(arch, source, name, location):
    ref = parse_arch(arch)
    assert (ref.source, ref.name, ref.location) == (source, name, location)


@pytest.mark.parametrize("arch,message", [
    ("torchvision:", "needs a model name after the colon"),
    ("mynets.py:1x", "is not a Python name"),
    ("my nets:tiny", "is neither a .py file nor a dotted module name"),
])
def test_malformed_arch_strings_say_what_is_wrong(arch, message):
    with pytest.raises(ArchError, match=message):
        parse_arch(arch)


def test_relative_file_resolves_against_the_given_folder(tmp_path):
    assert resolve_arch("nets/mynets.py:tiny", tmp_path) == f"{(tmp_path / 'nets' / 'mynets.py').resolve()}:tiny"
    assert resolve_arch("timm:resnet18", tmp_path) == "timm:resnet18"  # only files move


def test_torchvision_and_timm_build_untrained_for_the_class_count():
    tv = build_model("torchvision:mobilenet_v3_small", num_classes=10)
    assert tv.classifier[-1].out_features == 10
    from timm.layers import DropPath

    tm = build_model("timm:resnet10t", num_classes=5, arch_args={"drop_path_rate": 0.1})
    assert tm.get_classifier().out_features == 5
    assert any(isinstance(m, DropPath) for m in tm.modules())  # arch_args reach the builder
    assert not any(isinstance(m, DropPath) for m in build_model("timm:resnet10t", num_classes=5).modules())


def test_user_file_builds_with_its_args(tmp_path):
    path = nets_file(tmp_path)
    model = build_model(f"{path}:tiny", num_classes=3, arch_args={"channels": 4})
    assert model[0].out_channels == 4 and model[-1].out_features == 3
    # relative to base_dir, as the spec's folder is used
    assert count_params(build_model("mynets.py:tiny", num_classes=3, base_dir=tmp_path)) == count_params(
        build_model(f"{path}:tiny", num_classes=3))


def test_module_form_imports_the_module(tmp_path, monkeypatch):
    nets_file(tmp_path, name="my_pkg_nets.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build_model("my_pkg_nets:tiny", num_classes=4)[-1].out_features == 4
    assert identity("my_pkg_nets:tiny") == "module my_pkg_nets (unversioned)"


def test_plugin_names_come_from_the_entry_point_group(tmp_path, monkeypatch):
    # a pip-installed package as importlib.metadata sees it: a dist-info folder with entry_points.txt
    nets_file(tmp_path, name="kdsweep_demo_plugin.py")
    info = tmp_path / "kdsweep_demo_plugin-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdsweep-demo-plugin\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[kdsweep.models]\ndemo_tiny = kdsweep_demo_plugin:tiny\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert known_problem("demo_tiny") is None
    assert build_model("demo_tiny", num_classes=6)[-1].out_features == 6
    assert identity("demo_tiny") == "plugin demo_tiny (kdsweep-demo-plugin 1.2)"
    assert not scales_with_width("demo_tiny")


def test_only_builtins_scale_and_others_refuse_a_width(tmp_path):
    assert scales_with_width("resnet8")
    assert not scales_with_width("torchvision_resnet18")  # a built-in with a fixed width
    assert not scales_with_width("torchvision:resnet18") and not scales_with_width("x.py:f")
    with pytest.raises(ArchError, match="has a fixed width"):
        build_model("torchvision:mobilenet_v3_small", num_classes=10, width=0.5)


def test_identity_names_the_builder_and_a_files_digest(tmp_path):
    import timm
    import torchvision

    assert identity("resnet8") == "builtin"
    assert identity("torchvision:resnet18") == f"torchvision {torchvision.__version__.split('+')[0]}"
    assert identity("timm:resnet18") == f"timm {timm.__version__}"
    path = nets_file(tmp_path)
    before = identity(f"{path}:tiny")
    assert before.startswith(f"file {path} sha256:")
    path.write_text(path.read_text() + "\n# edited\n")
    assert identity(f"{path}:tiny") != before


def test_an_edited_user_file_changes_the_reuse_key(tmp_path):
    path = nets_file(tmp_path)
    cfg = TrainConfig(arch=f"{path}:tiny")
    path.write_text(path.read_text() + "\n# edited\n")
    again = TrainConfig(arch=f"{path}:tiny")
    assert cfg.arch_source != again.arch_source
    assert cfg.fingerprint(data_identity="d") != again.fingerprint(data_identity="d")
    # a built-in's key leaves the source out, so keys from before sources existed still match
    builtin = TrainConfig(arch="resnet8")
    assert builtin.as_params()["arch_source"] == "builtin"
    assert builtin.fingerprint(data_identity="d") == dataclasses.replace(
        builtin, arch_source="x").fingerprint(data_identity="d", ignore=("device", "arch_source"))


# -- bad model inputs: one line each, exit 2, nothing created ------------------------------------

RECIPE = {"epochs": 1, "batch_size": 32}


def bad_cases(folder: Path) -> dict[str, tuple[dict, str]]:
    """case: (spec overrides, the line after 'spec.yaml: ')."""
    nets = nets_file(folder)
    broken = nets_file(folder, "import no_such_module_here\n", name="broken.py")
    syntax = nets_file(folder, "def tiny(:\n", name="syntax.py")
    # an ImageNet-sized (1,000-class) bare state_dict of torchvision's mobilenet_v3_small
    torch.save(build_model("torchvision:mobilenet_v3_small", num_classes=1000).state_dict(), folder / "imagenet.pt")
    student = lambda arch, **kw: {"student": {"arch": arch, "recipe": RECIPE, **kw}}  # noqa: E731
    return {
        "unknown name": (student("resnet21"), "student.arch='resnet21': unknown architecture; choose from"),
        "missing file": (student("absent.py:tiny"), f"student.arch='{folder / 'absent.py'}:tiny': "
                                                    f"{folder / 'absent.py'}: file does not exist"),
        "file does not import": (student("broken.py:tiny"), f"student.arch='{broken}:tiny': {broken} does not import: "
                                                            "ModuleNotFoundError: No module named 'no_such_module_here'"),
        "file has a syntax error": (student("syntax.py:tiny"), f"student.arch='{syntax}:tiny': {syntax} does not "
                                                               "import: SyntaxError: "),
        "module does not import": (student("no_such_pkg.nets:tiny"),
                                   "student.arch='no_such_pkg.nets:tiny': no_such_pkg.nets does not import: "
                                   "ModuleNotFoundError: No module named 'no_such_pkg'"),
        "no such callable": (student("mynets.py:huge"), f"student.arch='{nets}:huge': {nets} has no 'huge'"),
        "not callable": (student("mynets.py:NOT_CALLABLE"), f"student.arch='{nets}:NOT_CALLABLE': "
                                                            f"{nets}:NOT_CALLABLE is a int, not a callable"),
        "returns no module": (student("mynets.py:not_a_module"), f"student.arch='{nets}:not_a_module': "
                                                                 f"{nets}:not_a_module returned a list, not a"),
        "wrong output shape": (student("mynets.py:seven"), f"student.arch='{nets}:seven': a batch of 2 32x32 "
                                                           "images gave shape [2, 7]; expected [2, 10]"),
        "bad arch_args": (student("mynets.py:tiny", arch_args={"chanels": 4}),
                          f"student.arch='{nets}:tiny': {nets}:tiny(num_classes=10, chanels=4) failed: TypeError"),
        "unknown torchvision name": (student("torchvision:resnet_nine"),
                                     "student.arch='torchvision:resnet_nine': torchvision "),
        "unknown timm name": (student("timm:resnet_nine"), "student.arch='timm:resnet_nine': timm "),
        "width on a fixed-width arch": (student("torchvision:mobilenet_v3_small", width=0.5),
                                        "student.width=0.5: torchvision:mobilenet_v3_small has a fixed width"),
        "searched width on a fixed-width arch": (
            {**student("mynets.py:tiny"), "search": {"width": {"choices": [0.5, 1.0]}}},
            f"search.width: student.arch='{nets}:tiny' has a fixed width"),
        "checkpoint of another class count": (
            {"teacher": {"arch": "torchvision:mobilenet_v3_small", "checkpoint": str(folder / "imagenet.pt")}},
            f"teacher.checkpoint='{folder / 'imagenet.pt'}': does not fit teacher torchvision:mobilenet_v3_small x1.0 "
            "with 10 classes: 2 of another shape (e.g. 'classifier.3.weight': [1000, 1024], the model has [10, 1024])"),
        "init of another network": (
            {"teacher": {"arch": "torchvision:resnet18", "init": str(folder / "imagenet.pt"), "recipe": RECIPE}},
            f"teacher.init='{folder / 'imagenet.pt'}': does not fit teacher torchvision:resnet18 (only the classifier "
            "head ['fc.weight', 'fc.bias'] may differ): tensor 'conv1.weight' is missing from the file"),
    }


def test_every_bad_model_input_exits_2_with_one_line_and_creates_nothing(workdir, subset_root):
    for case, (overrides, expected) in bad_cases(workdir).items():
        spec = write_spec(workdir / "spec.yaml", subset_root, **overrides)
        result = CliRunner().invoke(main, ["study", "run", str(spec)])
        assert result.exit_code == 2, (case, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (case, lines)
        assert lines[0].startswith(f"Error: {spec}: {expected}"), (case, lines[0])
        assert created(workdir) == [], case


# -- a study with a torchvision teacher from a weights file and a student from the user's file ----

def test_study_runs_a_torchvision_checkpoint_teacher_and_a_user_file_student(workdir, subset_root):
    torch.manual_seed(0)
    teacher = build_model("torchvision:mobilenet_v3_small", num_classes=10)
    # a DataParallel-style file: wrapped in 'model', every name prefixed 'module.'
    torch.save({"model": {f"module.{k}": v for k, v in teacher.state_dict().items()}}, workdir / "teacher.pth")
    nets = nets_file(workdir)
    # absolute store URLs: MLflow caches its store per URL string (a relative one reaches an earlier test's)
    tracking = f"sqlite:///{workdir}/mlruns/mlflow.db"
    spec = write_spec(workdir / "spec.yaml", subset_root, name="asis-study", n_trials=1, search={},
                      tracking_uri=tracking, storage=f"sqlite:///{workdir}/mlruns/optuna.db",
                      data={"dataset": "cifar10", "root": str(subset_root), "limit_per_file": 20},
                      teacher={"arch": "torchvision:mobilenet_v3_small", "checkpoint": "teacher.pth"},
                      student={"arch": "mynets.py:tiny", "arch_args": {"channels": 4}, "recipe": RECIPE})
    result = CliRunner().invoke(main, ["study", "run", str(spec)])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("asis-study").experiment_id])
    by_role = {r.data.tags["role"]: r for r in runs}
    t = by_role["teacher"].data
    assert t.params["arch"] == "torchvision:mobilenet_v3_small"
    assert t.params["arch_source"].startswith("torchvision ")
    assert t.metrics["num_params"] == count_params(teacher)
    assert t.params["param_count"] == str(count_params(teacher))  # a param too: known before the run trains
    # used as-is: the teacher run's test accuracy is that of the file's weights, evaluated here
    data = load_data(load_spec(spec))
    assert t.metrics["final_test_acc"] == pytest.approx(evaluate_split(teacher, data)[1])
    for role in ("baseline", "distilled"):
        p, m = by_role[role].data.params, by_role[role].data.metrics
        assert p["arch"] == f"{nets}:tiny"  # made absolute against the spec's folder
        assert p["arch_source"] == identity(f"{nets}:tiny") and "sha256:" in p["arch_source"]
        assert p["arch_args"] == '{"channels":4}'
        size = count_params(build_model(f"{nets}:tiny", num_classes=10, arch_args={"channels": 4}))
        assert m["num_params"] == size and p["param_count"] == str(size)


def test_validate_refuses_a_width_for_a_fixed_width_arch_in_one_line(workdir, subset_root):
    spec = write_spec(workdir / "spec.yaml", subset_root,
                      teacher={"arch": "timm:resnet10t", "width": 2.0, "recipe": RECIPE})
    result = CliRunner().invoke(main, ["study", "validate", str(spec)])
    assert result.exit_code == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"Error: {spec}: teacher.width=2.0: timm:resnet10t has a fixed width (only built-in models scale); "
        "leave width out or set 1.0"]


def test_a_relative_arch_file_is_read_from_the_specs_folder_not_the_working_one(workdir, subset_root):
    folder = workdir / "studies" / "mine"
    folder.mkdir(parents=True)
    nets = nets_file(folder)
    spec = load_spec(write_spec(folder / "spec.yaml", subset_root, student={"arch": "mynets.py:tiny"}))
    assert spec.student.arch == f"{nets.resolve()}:tiny"
    cfg = TrainConfig(arch=spec.student.arch)
    assert cfg.arch_source == identity(f"{nets}:tiny")
