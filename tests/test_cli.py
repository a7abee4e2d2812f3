"""The CLI on bad input: exit code 2, one stderr line per problem naming file, field and value,
and nothing created (no mlruns/ folder, so no Optuna study, no MLflow store or run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import run_cli, write_spec
from kdsweep.cli import main


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KDSWEEP_DATA_ROOT", raising=False)
    return tmp_path


def spec_file(workdir: Path, subset_root: Path, **overrides) -> Path:
    return write_spec(workdir / "spec.yaml", subset_root, **overrides)


def created(workdir: Path) -> list[str]:
    """Everything in the working folder except the spec itself."""
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.name != "spec.yaml")


def error_lines(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("Error: "), stderr
    return [lines[0].removeprefix("Error: "), *lines[1:]]


BAD = {  # case id: (spec overrides, fields that must each get their own line)
    "unknown key": ({"colour": "red"}, ["colour"]),
    "wrong type": ({"n_trials": "many"}, ["n_trials"]),
    "alpha above 1": ({"student": {"arch": "resnet8", "kd": {"alpha": 1.5}}}, ["student.kd.alpha"]),
    "temperature zero": ({"search": {"kd": {"temperature": {"low": 0, "high": 4}}}}, ["search.kd.temperature"]),
    "ema decay 1": ({"search": {"ema_decay": {"choices": [0.0, 1.0]}}}, ["search.ema_decay"]),
    "lr zero": ({"search": {"lr": 0.0}}, ["search.lr"]),
    "low above high": ({"search": {"kd": {"alpha": {"low": 0.9, "high": 0.1}}}}, ["search.kd.alpha"]),
    "empty choices": ({"search": {"width": {"choices": []}}}, ["search.width.choices"]),
    "no trials": ({"n_trials": 0}, ["n_trials"]),
    "unknown arch": ({"teacher": {"arch": "resnet7"}}, ["teacher.arch"]),
    "unknown sampler": ({"sampler": "bayes"}, ["sampler"]),
    "unknown pruner": ({"pruner": "asha"}, ["pruner"]),
    "no data root": ({"data": {"root": "no/such/folder"}}, ["data.root"]),
    "five at once": ({"sampler": "bayes", "pruner": "asha", "n_trials": 0, "teacher": {"arch": "resnet7"},
                      "data": {"root": "no/such/folder"}},
                     ["sampler", "pruner", "n_trials", "teacher.arch", "data.root"]),
}


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_spec_exits_2_with_a_line_per_problem_and_creates_nothing(workdir, subset_root, command, case):
    overrides, fields = BAD[case]
    spec = spec_file(workdir, subset_root, **overrides)
    result = CliRunner().invoke(main, ["study", command, str(spec)])
    assert result.exit_code == 2, result.output
    lines = error_lines(result.stderr)
    assert len(lines) == len(fields), lines
    for field, line in zip(sorted(fields), sorted(lines, key=lambda l: l.split(": ")[1])):
        assert line.startswith(f"{spec}: {field}="), line
    assert created(workdir) == []


@pytest.mark.parametrize("content,expected", [
    ("", "spec is empty"),
    ("teacher: [1, 2\n", "not valid YAML"),
    ("just a string\n", "spec must be a mapping"),
])
def test_unparseable_spec_exits_2(workdir, content, expected):
    (workdir / "spec.yaml").write_text(content)
    result = CliRunner().invoke(main, ["study", "run", "spec.yaml"])
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [line for line in error_lines(result.stderr) if expected in line]
    assert created(workdir) == []


def test_unreadable_spec_exits_2(workdir):
    result = CliRunner().invoke(main, ["study", "run", "absent.yaml"])
    assert result.exit_code == 2
    assert error_lines(result.stderr) == ["absent.yaml: cannot read spec: No such file or directory"]
    assert created(workdir) == []


@pytest.mark.parametrize("flags,expected", [
    (["--n-trials", "0"], "Invalid value for '--n-trials'"),
    (["--n-trials", "two"], "Invalid value for '--n-trials'"),
    (["--colour", "red"], "No such option"),
    (["--device", "gpu"], "device='gpu' (from --device)"),
    (["--storage", "optuna.db"], "storage='optuna.db' (from --storage)"),
    (["--tracking-uri", "ftp://x"], "tracking_uri='ftp://x' (from --tracking-uri)"),
    (["--data-root", "no/such/folder"], "data.root='no/such/folder' (from --data-root"),
])
def test_bad_flags_exit_2_and_create_nothing(workdir, subset_root, flags, expected):
    spec = spec_file(workdir, subset_root)
    result = CliRunner().invoke(main, ["study", "run", str(spec), *flags])
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert created(workdir) == []


def test_folder_without_the_data_set_exits_2_and_creates_nothing(workdir, subset_root):
    # passes validation (the folder exists) but holds no CIFAR files: found when the data is read,
    # which happens before any store or run is made
    (workdir / "empty").mkdir()
    spec = spec_file(workdir, subset_root, data={"dataset": "cifar10", "root": "empty"})
    result = CliRunner().invoke(main, ["study", "run", str(spec)])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result.stderr)
    assert "no cifar10 data found" in line and "empty" in line
    assert created(workdir) == ["empty"]


def test_bad_spec_as_a_real_process(tmp_path, subset_root):
    spec = write_spec(tmp_path / "spec.yaml", subset_root, n_trials=0, pruner="asha")
    done = run_cli("study", "run", "spec.yaml", cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = error_lines(done.stderr)
    assert sorted(lines) == sorted([f"spec.yaml: n_trials=0: Input should be greater than or equal to 1",
                                    "spec.yaml: pruner='asha': Input should be 'median', 'hyperband' or 'none'"])
    assert created(tmp_path) == []
    assert yaml.safe_load(spec.read_text())["n_trials"] == 0  # the spec itself is left alone
