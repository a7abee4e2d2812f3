"""Every shipped study validates, and each seed project's setup runs through the real CLI.

The data are tiny generated sets in the real on-disk layouts (torchvision's CIFAR folders, the
Imagewoof tarball's image folders); the studies are run as shipped, with only their size turned
down on the command line (--set: epochs, widths, seeds, trials).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from conftest import REPO, run_cli
from tiny_layouts import write_cifar10, write_cifar100, write_image_folder

from kdsweep.cli import main

STUDIES = sorted((REPO / "studies").glob("*.yaml"))
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny CPU runs: a second OpenMP thread only adds spinning
SMALL = ["--device", "cpu", "--n-trials", "1", "--set", "seeds=[0]",
         "--set", "teacher.recipe.epochs=2", "--set", "student.recipe.epochs=2",
         "--set", "teacher.recipe.batch_size=25", "--set", "student.recipe.batch_size=25"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {"cifar10": write_cifar10(root / "c10", per_file=20, n_test=50),
            "cifar100": write_cifar100(root / "c100", n_train=200, n_test=100),
            "imagefolder": write_image_folder(root / "iw", classes=4, per_class=10, val_per_class=5)}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One working folder (one MLflow store) for all seed runs, as a user's checkout would be."""
    return tmp_path_factory.mktemp("work")


def dataset_of(spec: Path) -> str:
    return yaml.safe_load(spec.read_text())["data"]["dataset"]


@pytest.mark.parametrize("spec", STUDIES, ids=[s.stem for s in STUDIES])
def test_shipped_study_validates(spec, data):
    result = CliRunner().invoke(main, ["study", "validate", str(spec), "--data-root", str(data[dataset_of(spec)])])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(f"{spec}: valid")


def run_study(work: Path, data: dict[str, Path], name: str, *extra: str, command=("study", "run")):
    spec = REPO / "studies" / f"{name}.yaml"
    proc = run_cli(*command, str(spec), "--data-root", str(data[dataset_of(spec)]), *SMALL, *extra, cwd=work,
                   env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def runs(work: Path, study: str, role: str | None = None) -> list:
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(study)
    query = "attributes.status = 'FINISHED'" + (f" and tags.role = '{role}'" if role else "")
    return client.search_runs([exp.experiment_id], query, max_results=1000)


def report(work: Path, *args: str):
    """`kdsweep report ARGS` in-process on the seed runs' stores."""
    stores = ["--tracking-uri", f"sqlite:///{work}/mlruns/mlflow.db", "--storage", f"sqlite:///{work}/mlruns/optuna.db"]
    result = CliRunner().invoke(main, ["report", *args, *stores])
    assert result.exit_code == 0, result.output
    return result


def history(work: Path, run_id: str, key: str) -> list[float]:
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_epai_session29_cnns_early_stopping_and_summary_table(work, data):
    run_study(work, data, "epai-session29", "--set", "teacher.width=0.25", "--set", "student.width=0.25",
              "--set", "teacher.recipe.patience=1", "--set", "student.recipe.patience=1")
    (teacher,), (baseline,), (distilled,) = (runs(work, "epai-session29", r) for r in ("teacher", "baseline",
                                                                                       "distilled"))
    assert (teacher.data.params["arch"], distilled.data.params["arch"]) == ("cnn_teacher", "cnn_student")
    assert teacher.data.params["patience"] == distilled.data.params["patience"] == "1"
    # alpha in kdsweep's convention (KD weight), from the study's converted range 0.5..0.95
    assert 0.5 <= float(distilled.data.params["kd.alpha"]) <= 0.95
    lines = report(work, "epai-session29").stdout.splitlines()
    assert lines[2].startswith("Trials selected on the validation split")  # where the numbers come from
    assert "Train acc %" in lines[4] and "Val acc %" in lines[4] and "Test acc %" in lines[4] and "Change %" in lines[4]
    change = next(line for line in lines if line.startswith("| Distilled")).split("|")[7].strip()
    assert change == f"{distilled.data.metrics['delta_vs_baseline'] * 100:+.2f}"


def test_teachernet_with_and_without_ema_compared(work, data):
    run_study(work, data, "teachernet-ema", "--set", "student.recipe.ema_decay=0.5")
    run_study(work, data, "teachernet-noema")
    (with_ema,), (without,) = runs(work, "teachernet-ema", "distilled"), runs(work, "teachernet-noema", "distilled")
    assert with_ema.data.params["arch"] == "teachernet12" and with_ema.data.params["width"] == "0.5"
    # the grid draws the same (temperature, alpha) in both studies: the trials pair up
    for key in ("kd.temperature", "kd.alpha"):
        assert with_ema.data.params[key] == without.data.params[key]
    assert len(history(work, with_ema.info.run_id, "test_acc_ema")) == 2
    assert history(work, without.info.run_id, "test_acc_ema") == []
    proc = report(work, "--compare", "teachernet-noema", "teachernet-ema")
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| Distilled student"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    acc = [r.data.metrics["final_test_acc"] for r in (without, with_ema)]
    assert cells[1:4] == [f"{acc[0] * 100:.2f}", f"{acc[1] * 100:.2f}", f"{(acc[1] - acc[0]) * 100:+.2f}"]


def test_yonsei_teacher_alone_then_students_from_its_checkpoint(work, data):
    narrow = ["--set", "teacher.width=0.25", "--set", "student.width=0.5"]
    proc = run_study(work, data, "yonsei-resnet18", *narrow, command=("teacher", "train"))
    weights = work / next(line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("weights: "))
    assert weights.is_file()
    (trained,) = runs(work, "yonsei-resnet18", "teacher")
    assert (trained.data.params["arch"], trained.data.params["optimizer"], trained.data.params["schedule"]) == \
        ("resnet18", "adam", "cosine")
    assert runs(work, "yonsei-resnet18", "distilled") == []  # --mode teacher trains the teacher only

    run_study(work, data, "yonsei-resnet18", *narrow, "--set", f"teacher.checkpoint={weights}")
    loaded = [r for r in runs(work, "yonsei-resnet18", "teacher") if r.data.tags.get("source") == "checkpoint"]
    assert len(loaded) == 1
    # the same weights on the same data: the accuracy the training run logged (one image of slack
    # for the memory layout the trainer evaluated in)
    assert loaded[0].data.metrics["final_test_acc"] == pytest.approx(trained.data.metrics["final_test_acc"],
                                                                     abs=1 / 50 + 1e-9)
    (distilled,) = runs(work, "yonsei-resnet18", "distilled")
    assert distilled.data.params["teacher_run_id"] == loaded[0].info.run_id
    assert (distilled.data.params["optimizer"], distilled.data.params["schedule"]) == ("adam", "cosine")
    spec = yaml.safe_load(CliRunner().invoke(main, ["study", "validate", str(REPO / "studies/yonsei-resnet18.yaml"),
                                                    "--data-root", str(data["cifar10"])]).output.rsplit("#", 1)[0])
    assert (spec["student"]["kd"]["temperature"], spec["student"]["kd"]["alpha"]) == (20.0, 0.9)  # T 20, 1 - lambda 0.1


def test_imagewoof_image_folder_with_torchvision_resnet18(work, data):
    run_study(work, data, "imagewoof", "--set", "data.image_size=32", "--set", "student.width=0.25")
    (teacher,), (distilled,) = runs(work, "imagewoof", "teacher"), runs(work, "imagewoof", "distilled")
    assert (teacher.data.params["arch"], distilled.data.params["arch"]) == ("torchvision_resnet18", "cnn5")
    assert teacher.data.params["dataset"] == "imagefolder"
    # 4 generated classes: torchvision's resnet18 with a 4-way head
    assert teacher.data.metrics["num_params"] == 11_178_564
    assert len(history(work, distilled.info.run_id, "test_acc")) == 2


def test_edge_ai_lab3_online_distillation_on_cifar100(work, data):
    proc = run_study(work, data, "edge-ai-lab3-cifar100", "--set", "teacher.width=0.5", "--set", "student.width=0.5")
    assert "online teachers" in proc.stdout
    teachers = runs(work, "edge-ai-lab3-cifar100", "teacher")
    (distilled,) = runs(work, "edge-ai-lab3-cifar100", "distilled")
    # no teacher trained up front: the one teacher belongs to the trial and seed it was trained with
    assert [(t.data.tags["mode"], t.data.tags["trial"], t.data.tags["seed"]) for t in teachers] == \
        [("online", distilled.data.tags["trial"], "0")]
    teacher = teachers[0]
    assert distilled.data.params["teacher_run_id"] == teacher.info.run_id
    assert (teacher.data.params["arch"], distilled.data.params["arch"]) == ("resnet56", "resnet20")
    assert teacher.data.params["epochs"] == distilled.data.params["epochs"] == "2"  # the student's batches
    assert len(history(work, teacher.info.run_id, "test_acc")) == 2
    m = distilled.data.metrics
    assert m["delta_vs_teacher"] == pytest.approx(m["final_test_acc"] - teacher.data.metrics["final_test_acc"])
    assert "| Teacher (online, per seed) | resnet56 x0.5 |" in report(work, "edge-ai-lab3-cifar100").stdout


def test_download_layouts_match_the_readers():
    # what `kdsweep data download` fetches is what the readers look for
    from torchvision import datasets

    from kdsweep.core import datasets as readers
    from kdsweep.core.data import IMAGEWOOF_URL

    for name, cls in (("cifar10", datasets.CIFAR10), ("cifar100", datasets.CIFAR100)):
        spec = readers._CIFAR[name]
        assert cls.base_folder == spec.py_dir
        assert tuple(f for f, _ in cls.train_list) == spec.py_train and cls.test_list[0][0] == spec.py_test
        assert (cls.meta["filename"], cls.meta["key"]) == spec.py_meta
    # fast.ai's 160 px Imagewoof; it unpacks to imagewoof2-160/{train,val}/<wnid>/, the layout written above
    assert IMAGEWOOF_URL == "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz"
