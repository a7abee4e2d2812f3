"""studies/cifar100-benchmarks: every pair of the DKD paper's CIFAR-100 tables validates, and one runs.

The run is the shipped resnet32x4 -> resnet8x4 study on generated 100-class data in the real
CIFAR-100 layout, shrunk on the command line (1 epoch, narrow widths, 2 seeds); its report
shows the published numbers beside the measured ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from conftest import REPO, run_cli
from tiny_layouts import write_cifar100

from kdsweep.cli import main

FOLDER = REPO / "studies" / "cifar100-benchmarks"
STUDIES = sorted(FOLDER.glob("*.yaml"))
# Zhao et al. 2022 (DKD), the CIFAR-100 tables: the teacher -> student pairs, same and different architectures
DKD_PAIRS = {
    ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"), ("resnet32x4", "shufflenetv1"), ("wrn_40_2", "shufflenetv1"),
    ("vgg13", "mobilenetv2"), ("resnet50", "mobilenetv2"), ("resnet32x4", "shufflenetv2"),
}


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("c100"), n_train=100, n_test=50)


def test_one_study_per_pair_of_the_dkd_tables():
    pairs = [(s["teacher"]["arch"], s["student"]["arch"]) for s in map(yaml.safe_load, map(Path.read_text, STUDIES))]
    assert sorted(pairs) == sorted(DKD_PAIRS)


@pytest.mark.parametrize("spec", STUDIES, ids=[s.stem for s in STUDIES])
def test_benchmark_study_validates_with_its_published_block(spec, cifar100):
    result = CliRunner().invoke(main, ["study", "validate", str(spec), "--data-root", str(cifar100)])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(f"{spec}: valid")
    resolved = yaml.safe_load(result.output.rsplit("#", 1)[0])
    assert resolved["student"]["recipe"]["milestones"] == [150, 180, 210]
    assert {"teacher", "student", "kd", "dkd"} <= {k for k, v in resolved["published"].items() if v is not None}


def test_resnet32x4_to_resnet8x4_runs_and_reports_published_beside_measured(tmp_path, cifar100):
    name = "cifar100-resnet32x4-resnet8x4"
    tiny = ["--device", "cpu", "--set", "seeds=[0, 1]", "--set", "teacher.width=0.125", "--set", "student.width=0.125",
            "--set", "teacher.recipe.epochs=1", "--set", "student.recipe.epochs=1",
            "--set", "teacher.recipe.batch_size=50", "--set", "student.recipe.batch_size=50"]
    proc = run_cli("study", "run", str(FOLDER / f"{name}.yaml"), "--data-root", str(cifar100), *tiny, cwd=tmp_path,
                   env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    (teacher,) = client.search_runs([exp.experiment_id], "tags.role = 'teacher'")
    assert (teacher.data.params["arch"], teacher.data.params["schedule"]) == ("resnet32x4", "multistep")
    assert teacher.data.params["milestones"] == "(150, 180, 210)"
    result = CliRunner().invoke(main, ["report", name, "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    section = result.output.split("## Published vs measured", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Row")}
    assert set(rows) == {"teacher", "student", "kd", "dkd"}
    assert rows["teacher"][2:4] == ["79.42", f"{100 * teacher.data.metrics['final_test_acc']:.2f}"]
    assert rows["teacher"][6] == "one run: no interval"  # one pretrained teacher
    assert [rows[k][2] for k in ("student", "kd", "dkd")] == ["72.50", "73.33", "76.32"]
    assert all(rows[k][6] in ("inside", "outside") for k in ("student", "kd", "dkd"))  # two seeds: an interval
