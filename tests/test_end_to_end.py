"""`kdsweep study run` and `kdsweep report` as real processes on the real CIFAR-10 subset."""

import re
import sqlite3

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli, write_spec
from kdsweep.core.precision import teacher_bf16

CPU = torch.device("cpu")

EPOCH_METRICS = {"train_loss", "train_acc", "test_acc", "lr", "epoch_seconds", "images_per_second"}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, subset_root):
    """One tiny study run through the CLI; the tests below read what it left behind."""
    work = tmp_path_factory.mktemp("e2e")
    spec = write_spec(work / "tiny.yaml", subset_root, n_trials=2)
    proc = run_cli("study", "run", str(spec), cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, spec, proc


def test_mlflow_holds_teacher_baseline_and_one_distilled_run_per_trial(finished_study):
    work, _, _ = finished_study
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    roles = sorted(r.data.tags["role"] for r in runs)
    assert roles == ["baseline", "distilled", "distilled", "study", "teacher"]
    parent = next(r for r in runs if r.data.tags["role"] == "study")
    for r in runs:
        assert r.info.status == "FINISHED"
        if r.data.tags["role"] == "study":
            continue
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = client.get_metric_history(r.info.run_id, "test_acc")
        assert [m.step for m in history] == [1, 2]  # one point per epoch
        assert EPOCH_METRICS <= set(r.data.metrics)
        assert {"arch", "width", "lr", "epochs", "method", "ema_decay", "seed"} <= set(r.data.params)
        if r.data.tags["role"] == "distilled":  # the method's own params, and no other method's
            assert r.data.params["method"] == "kd"
            assert {k for k in r.data.params if "." in k} == {"kd.alpha", "kd.temperature"}
            assert {"loss_kd", "loss_ce"} <= set(r.data.metrics)
        assert [a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")]
    for r in runs:
        if r.data.tags["role"] == "distilled":
            m = r.data.metrics
            assert {"delta_vs_baseline", "delta_vs_teacher"} <= set(m)
            base = client.get_run(r.data.params["baseline_run_id"]).data.metrics["final_test_acc"]
            assert m["delta_vs_baseline"] == pytest.approx(m["final_test_acc"] - base)
            # 2 trials x 1 seed x 2 epochs < 162 views: no table; the teacher's precision by the CPU's rule
            assert r.data.params["teacher_logits"] == f"online, {'bf16' if teacher_bf16('auto', CPU) else 'fp32'}"
            if float(r.data.params["ema_decay"]) > 0:
                assert "test_acc_ema" in m


def test_optuna_study_has_the_trials(finished_study):
    work, _, _ = finished_study
    con = sqlite3.connect(work / "mlruns" / "optuna.db")
    states = [s for (s,) in con.execute("select state from trials")]
    assert states == ["COMPLETE", "COMPLETE"]


def test_report_prints_the_three_row_table(finished_study):
    work, _, _ = finished_study
    proc = run_cli("report", "tiny", cwd=work)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for label in ("| Teacher |", "| Student (baseline) |", "| Distilled student (trial"):
        assert any(line.startswith(label) for line in lines), label
    assert "final epoch (2)" in proc.stdout


@pytest.mark.parametrize("fmt, marker", [("csv", "Model,Architecture"), ("html", "<table class='sortable'>")])
def test_report_formats_to_file(finished_study, fmt, marker):
    work, _, _ = finished_study
    out = work / f"report.{fmt}"
    proc = run_cli("report", "tiny", "--format", fmt, "--out", str(out), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert marker in out.read_text()


def test_run_prints_the_best_trial_rounded(finished_study):
    _, _, proc = finished_study
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("study tiny:"))
    assert re.search(r"best trial \d+ by validation: -?\d\.\d{4} \(.*kd\.temperature=[\d.e+-]+", line), line


def test_rerun_of_a_finished_study_trains_nothing(finished_study):
    work, spec, _ = finished_study
    proc = run_cli("study", "run", str(spec), cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    assert len(client.search_runs([exp.experiment_id], max_results=100)) == 5


def test_env_var_and_flag_choose_the_data_root(tmp_path, subset_root):
    spec = write_spec(tmp_path / "s.yaml", tmp_path / "nowhere")
    bad = run_cli("study", "validate", str(spec), cwd=tmp_path)
    assert bad.returncode == 2 and "data.root" in bad.stderr
    env_ok = run_cli("study", "validate", str(spec), cwd=tmp_path, env={"KDSWEEP_DATA_ROOT": str(subset_root)})
    assert env_ok.returncode == 0, env_ok.stderr
    # the flag beats the variable
    flag = run_cli("study", "validate", str(spec), "--data-root", str(tmp_path / "gone"), cwd=tmp_path,
                   env={"KDSWEEP_DATA_ROOT": str(subset_root)})
    assert flag.returncode == 2 and "gone" in flag.stderr
