"""Shared fixtures: the real CIFAR-10 subset, small generated data, the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBSET = REPO.parent / "shared" / "datasets" / "cifar10-subset"


def require_or_skip(reason: str) -> None:
    """Skip with ``reason``; in CI (KDSWEEP_REQUIRE_SERVICES=1) a missing service is a failure."""
    if os.environ.get("KDSWEEP_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def subset_root() -> Path:
    if not (SUBSET / "cifar-10-batches-bin").is_dir():
        require_or_skip(f"CIFAR-10 subset not found at {SUBSET}")
    return SUBSET


@pytest.fixture(scope="session")
def tiny_imageset(subset_root):
    """60 real images per official file: 300 train / 60 test, enough for a fast CPU run."""
    from kdsweep.core.data import load_dataset

    return load_dataset("cifar10", subset_root, limit_per_file=60)


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m kdsweep ARGS`` in ``cwd`` as a real process."""
    full_env = {k: v for k, v in os.environ.items() if k != "KDSWEEP_DATA_ROOT"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "kdsweep", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def write_spec(path: Path, data_root: Path, **overrides) -> Path:
    """A tiny study spec (resnet8 teacher, narrow resnet8 students) on ``data_root``."""
    import yaml

    spec = {
        "name": "tiny",
        "seeds": [0],
        "data": {"dataset": "cifar10", "root": str(data_root), "limit_per_file": 40},
        "teacher": {"arch": "resnet8", "width": 0.5, "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05}},
        "student": {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05}},
        "search": {"temperature": {"low": 2.0, "high": 6.0}, "alpha": {"low": 0.5, "high": 0.9},
                   "ema_decay": {"choices": [0.0, 0.9]}},
        "sampler": "random",
        "pruner": "none",
        "n_trials": 2,
        "device": "cpu",
    }
    for key, value in overrides.items():
        spec[key] = value
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
