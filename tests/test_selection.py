"""Honest selection: every decision reads the validation split, so wrong test labels change nothing but test numbers.

The same study runs twice, on two copies of the data that differ only in the test split's labels
(the second copy's are permuted). If any decision (trial value, pruning, early stopping, the
trials picked for confirmation) read a test metric, the two studies would part ways. On the CPU
they must agree bit for bit on every validation number and decision, while their test accuracies
differ.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import run_cli
from tiny_layouts import write_cifar10

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _study(work: Path, data: Path) -> Path:
    recipe = {"epochs": 3, "batch_size": 25, "lr": 0.05, "patience": 2}
    spec = {"name": "honest", "seeds": [0, 1], "data": {"dataset": "cifar10", "root": str(data), "val_split": 0.2},
            "teacher": {"arch": "cnn_teacher", "width": 0.25, "recipe": {**recipe, "patience": 0}},
            "student": {"arch": "cnn_student", "width": 0.25, "recipe": recipe},
            "search": {"method": {"choices": ["kd", "dkd"]}, "kd": {"temperature": {"low": 2.0, "high": 8.0}},
                       "lr": {"low": 0.01, "high": 0.1, "log": True}},
            "sampler": "tpe", "pruner": "median", "n_trials": 5, "objective": "delta_vs_baseline",
            "confirm": {"top_k": 2, "seeds": [100]}, "device": "cpu"}
    work.mkdir(parents=True, exist_ok=True)
    path = work / "honest.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = run_cli("study", "run", str(path), cwd=work, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    base = tmp_path_factory.mktemp("honest")
    right = write_cifar10(base / "data-right", per_file=30, n_test=60)
    wrong = write_cifar10(base / "data-wrong", per_file=30, n_test=60, permute_test_labels=7)
    return _study(base / "right", right), _study(base / "wrong", wrong)


def _optuna(work: Path):
    return optuna.load_study(study_name="honest", storage=f"sqlite:///{work}/mlruns/optuna.db").trials


def _runs(work: Path) -> dict[tuple[str, str, str], object]:
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("honest")
    out = {}
    for r in client.search_runs([exp.experiment_id], "tags.role != 'study'", max_results=1000):
        key = (r.data.tags["role"], r.data.tags.get("trial", r.data.params.get("width", "")), r.data.params["seed"])
        out[key] = (client, r)
    return out


def _history(client, run, metric: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric)]


def test_trial_values_pruning_and_params_are_identical(twins):
    a, b = (_optuna(w) for w in twins)
    assert [(t.state, t.values, t.params) for t in a] == [(t.state, t.values, t.params) for t in b]
    # what the pruner saw, epoch by epoch: validation accuracy
    assert [t.intermediate_values for t in a] == [t.intermediate_values for t in b]
    assert any(t.values for t in a)


def test_the_same_trials_are_confirmed(twins):
    a, b = (_runs(w) for w in twins)
    confirmed = sorted(k for k in a if k[0] == "confirm")
    assert confirmed and confirmed == sorted(k for k in b if k[0] == "confirm")


def test_validation_metrics_are_identical_and_test_metrics_differ(twins):
    a, b = (_runs(w) for w in twins)
    assert a.keys() == b.keys()
    test_differs = False
    for key in a:
        (ca, ra), (cb, rb) = a[key], b[key]
        for metric in ("val_acc", "train_loss"):
            assert _history(ca, ra, metric) == _history(cb, rb, metric), (key, metric)
        assert ra.data.metrics.get("best_val_epoch") == rb.data.metrics.get("best_val_epoch"), key
        test_differs |= _history(ca, ra, "test_acc") != _history(cb, rb, "test_acc")
    assert test_differs  # the test split did change: the check above is not vacuous


def test_decision_code_reads_no_test_metric():
    # objective (trial value, pruning), confirmation (which trials) and the early stop read
    # validation only; the words they would need to read a test metric do not occur in them
    root = Path(__file__).resolve().parents[1] / "kdsweep"
    for rel in ("study/objective.py", "study/confirm.py"):
        code = "\n".join(line.split("#")[0] for line in (root / rel).read_text().splitlines()
                         if not line.strip().startswith(('"', "'")))
        for word in ("test_acc", "test_score", "final_test", "reported_test_acc", "best_val_test_acc"):
            assert word not in code, (rel, word)
    trainer = (root / "core/trainer.py").read_text()
    stop = trainer[trainer.index("if metrics.score > self.best"):][:200]
    assert "test" not in stop  # early stopping and the best epoch follow EpochMetrics.score (validation)


def test_report_leads_with_confirmed_rows_and_their_intervals(twins):
    work = twins[0]
    proc = run_cli("report", "honest", "--tracking-uri", f"sqlite:///{work}/mlruns/mlflow.db", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[2].startswith("Trials selected on the validation split; the distilled rows are their confirmation")
    confirmed = [line for line in lines if "confirmed" in line and line.startswith("| Distilled")]
    assert len(confirmed) == 2 and "[best]" in confirmed[0]  # top_k 2, the first by validation
    assert all("search: val" in line for line in confirmed)  # the same trial during the search, beside it
    assert "## Top search trials (selected on validation)" in proc.stdout
    # one confirmation seed: a gain but no interval, and the report says so instead of inventing one
    assert all("one seed: no interval" in line for line in confirmed)
    # the best-per-method table compares search trials with the search seeds' baseline (2 seeds),
    # not with the confirmation seed's (the headline's baseline row, 1 seed)
    headline_base = next(line for line in lines if line.startswith("| Student (baseline)"))
    method_base = next(line for line in lines if line.startswith("| baseline (ce)"))
    assert " +- " not in headline_base.split("|")[6] and method_base.split("|")[6].strip() == "2"
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("honest")
    for r in client.search_runs([exp.experiment_id], "tags.role != 'study'", max_results=1000):
        # every epoch of every run, pruned ones too (KILLED, no final metrics)
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "test_acc")]
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")] == steps and steps
        if r.info.status == "FINISHED":
            assert steps == list(range(1, int(r.data.metrics["final_epoch"]) + 1)), r.data.tags["role"]
        assert r.data.params["val_split"] != "none"
