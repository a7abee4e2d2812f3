"""The Python API (kdsweep/api.py), and what it runs: a study searching the student's arch with a
Pareto objective of accuracy and latency.

One tiny study (a user file's model and a built-in arch, 1 epoch, 3 trials, one seed, on the
CIFAR-10 subset) runs once
through ``kdsweep.run_study``, the path ``kdsweep study run`` takes; the tests read back what
MLflow and Optuna hold, and the report (``kdsweep report`` and ``kdsweep.load_report``).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import kdsweep
from kdsweep.cli import main
from kdsweep.errors import KdsweepError, SpecError
from kdsweep.tracking.render import ARCH_HEADER

ARCHS = ["mynets.py:tiny", "resnet8"]
RECIPE = {"epochs": 1, "batch_size": 32, "lr": 0.05}
MYNETS = """
from torch import nn


def tiny(num_classes):
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, num_classes))
"""


def arch_spec(data_root: Path) -> dict:
    return {"name": "archs", "seeds": [0],
            "data": {"dataset": "cifar10", "root": str(data_root), "limit_per_file": 20},
            "teacher": {"arch": "cnn_teacher", "width": 0.25, "recipe": RECIPE},
            "student": {"arch": "resnet8", "width": 0.5, "recipe": RECIPE},
            "search": {"arch": {"choices": ARCHS}, "lr": {"low": 0.01, "high": 0.1, "log": True}},
            "objective": ["val_acc", "latency_ms"], "sampler": "random", "pruner": "none", "device": "cpu",
            "n_trials": 3, "latency_repeats": 2}


@pytest.fixture(scope="module")
def study(tmp_path_factory, subset_root):
    work = tmp_path_factory.mktemp("archs")
    (work / "mynets.py").write_text(MYNETS)  # a user's model, named relative to the folder the spec is run from
    before = os.getcwd()
    os.chdir(work)  # the study's stores and checkpoints go under ./mlruns, as with the CLI
    try:
        # absolute store URLs: MLflow caches a store per URL string, and a relative one could reach the
        # database of an earlier test in the same process
        outcome = kdsweep.run_study(arch_spec(subset_root), **stores(work), artifacts=str(work / "artifacts"))
    finally:
        os.chdir(before)
    return work, outcome


def stores(work: Path) -> dict[str, str]:
    return {"tracking_uri": f"sqlite:///{work}/mlruns/mlflow.db", "storage": f"sqlite:///{work}/mlruns/optuna.db"}


def archs(work: Path) -> set[str]:
    """ARCHS as the study records them: the user file's path made absolute."""
    return {f"{work / 'mynets.py'}:tiny", "resnet8"}


def runs(work: Path, role: str) -> list:
    client = MlflowClient(stores(work)["tracking_uri"])
    exp = client.get_experiment_by_name("archs")
    return client.search_runs([exp.experiment_id], f"tags.role = '{role}' and attributes.status = 'FINISHED'")


def test_run_study_returns_the_summary(study):
    work, outcome = study
    assert (outcome.study_name, outcome.complete, outcome.failed) == ("archs", 3, 0)
    assert outcome.best_params["arch"] in archs(work)


def test_each_arch_is_trained_with_its_own_baselines(study):
    work, _ = study
    distilled, baselines = runs(work, "distilled"), {r.info.run_id: r for r in runs(work, "baseline")}
    # the first trials try each arch once, so both are trained
    assert {r.data.params["arch"] for r in distilled} == archs(work)
    assert {r.data.params["arch"] for r in baselines.values()} == archs(work)
    for r in distilled:  # a delta is never taken across archs
        base = baselines[r.data.params["baseline_run_id"]]
        assert ((base.data.params["arch"], base.data.params["width"], base.data.params["seed"])
                == (r.data.params["arch"], r.data.params["width"], r.data.params["seed"]))
        # width is the student's for the built-in, fixed at 1.0 for the user's model (it cannot scale)
        assert float(r.data.params["width"]) == (0.5 if r.data.params["arch"] == "resnet8" else 1.0)
        assert r.data.metrics["delta_vs_baseline"] == pytest.approx(
            r.data.metrics["final_test_acc"] - base.data.metrics["final_test_acc"])


def test_latency_is_logged_once_per_arch_with_the_device(study):
    work, _ = study
    by_arch: dict[str, set] = {}
    for r in runs(work, "distilled"):
        m, p = r.data.metrics, r.data.params
        assert m["latency_ms"] > 0 and m["throughput_ips"] > 0
        assert p["latency_device"] and p["latency_precision"] == "fp32"
        by_arch.setdefault(p["arch"], set()).add(m["latency_ms"])
    # measured once per study and arch: every run of an arch carries the same number
    assert all(len(v) == 1 for v in by_arch.values()), by_arch


def test_the_pareto_study_minimises_latency(study):
    work, _ = study
    st = optuna.load_study(study_name="archs", storage=stores(work)["storage"])
    assert st.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    latency = {r.data.tags["trial"]: r.data.metrics["latency_ms"] for r in runs(work, "distilled")}
    for t in st.trials:
        assert t.values[1] == pytest.approx(latency[str(t.number)])


def test_the_report_lists_the_front_and_the_best_trial_per_arch(study):
    work, _ = study
    result = CliRunner().invoke(main, ["report", "archs", "--tracking-uri", stores(work)["tracking_uri"]])
    assert result.exit_code == 0, result.output
    text = result.stdout
    section = text.split("## Pareto front: accuracy vs latency (ms per image, batch 1)", 1)[1].split("##")[0]
    front = {line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ") and
             line.split("|")[1].strip().isdigit()}
    points = {}
    for r in runs(work, "distilled"):
        points[r.data.tags["trial"]] = (r.data.metrics["final_val_acc"], r.data.metrics["latency_ms"])
    dominated = {t for t, (a, l) in points.items()
                 if any(a2 >= a and l2 <= l and (a2 > a or l2 < l) for a2, l2 in points.values())}
    assert front == set(points) - dominated and front
    per_arch = text.split("## Best per architecture", 1)[1].split("##")[0]
    assert {line.split("|")[1].strip() for line in per_arch.splitlines()[3:] if line.startswith("| ")} == archs(work)


def test_the_csv_report_has_the_best_trial_per_arch(study):
    work, _ = study
    result = CliRunner().invoke(main, ["report", "archs", "--format", "csv", "--tracking-uri",
                                       stores(work)["tracking_uri"]])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    start = rows.index(ARCH_HEADER)
    assert {r[0] for r in rows[start + 1:start + 3]} == archs(work)


def test_the_html_plots_accuracy_against_latency_with_the_front(study):
    work, _ = study
    result = CliRunner().invoke(main, ["report", "archs", "--format", "html", *sum(
        ([f"--{k.replace('_', '-')}", v] for k, v in stores(work).items()), [])])
    assert result.exit_code == 0, result.output
    page = result.stdout
    chart = page.split("data-name='pareto_front'", 1)[1].split("</figure>", 1)[0]
    assert "accuracy vs student latency" in chart and "Pareto front" in chart and "latency, ms per image" in chart


def test_load_report_returns_the_rows_as_a_dataframe(study):
    work, _ = study
    df = kdsweep.load_report("archs", tracking_uri=stores(work)["tracking_uri"])
    assert isinstance(df, pd.DataFrame) and list(df["label"].str.split(" ").str[0]) == ["Teacher", "Student",
                                                                                        "Distilled"]
    best = df.iloc[2]
    trial = best["label"].split("trial ")[1].split(",")[0]
    (run,) = [r for r in runs(work, "distilled") if r.data.tags["trial"] == trial]
    assert best["test_acc"] == pytest.approx(run.data.metrics["final_test_acc"])
    assert best["arch"].startswith(run.data.params["arch"])
    assert {t["arch"] for t in df.attrs["trials"]} == archs(work)


def test_run_study_again_resumes_and_trains_nothing_new(study, subset_root, monkeypatch):
    work, first = study
    monkeypatch.chdir(work)
    before = len(runs(work, "distilled"))
    again = kdsweep.run_study(arch_spec(subset_root), publish=False, **stores(work), artifacts=str(work / "artifacts"))
    assert (again.complete, again.best_trial) == (first.complete, first.best_trial)
    assert len(runs(work, "distilled")) == before


def test_a_bad_spec_raises_kdsweep_error_and_creates_nothing(tmp_path, monkeypatch, subset_root):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        kdsweep.run_study({**arch_spec(subset_root), "search": {"arch": {"choices": ["resnet8", "cnn_student"]}},
                           "sampler": "bayes"}, n_trials=0)
    assert isinstance(info.value, KdsweepError)
    assert sorted(p.split(": ")[1].split("=")[0] for p in info.value.problems) == ["n_trials", "sampler"]
    assert "(from --n-trials)" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_import_kdsweep_loads_neither_torch_nor_mlflow():
    code = ("import sys, kdsweep; from kdsweep import run_study, load_report; "
            "print(sorted(m for m in ('torch', 'mlflow', 'optuna', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_overrides_of_a_spec_file_are_flags_and_top_level_fields(tmp_path, subset_root):
    from kdsweep.api import load
    from conftest import write_spec

    path = write_spec(tmp_path / "spec.yaml", subset_root)
    spec, source = load(path, {"n_trials": 5, "seeds": [3, 4], "set": "student.recipe.epochs=1"})
    assert (spec.n_trials, spec.seeds, spec.student.recipe.epochs, source) == (5, [3, 4], 1, str(path))
    # a field given twice: the named flag wins over a --set item, as on the command line
    spec, _ = load(path, {"n_trials": 5, "set": ["n_trials=7"]})
    assert spec.n_trials == 5
