"""The soak benchmark, small: 3 real workers, 30 tiny trials, one PostgreSQL study, one MLflow server
(the size the reliability issue asks of the suite).

The full size (8 workers, 200 trials) is ``python benchmarks/workers_soak.py``; its figures are in
docs/RELIABILITY.md. Both check the same things, with the same functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import workers_soak  # noqa: E402


def test_three_workers_finish_exactly_thirty_trials_each_logged_once(tmp_path, subset_root, postgres_server):
    result = workers_soak.soak(postgres_server, workers=3, trials=30, data_root=subset_root, folder=tmp_path,
                               timeout=900, server_workers=1)
    print("\n".join(result.lines()))  # the figures, in the test log (-s)
    # exactly 30 finished, no number twice, none RUNNING, no "too many clients", one FINISHED run each
    assert result.problems == []
    assert result.states == {"COMPLETE": 30}
    assert result.trials_per_minute > 0
    # each worker holds a few connections (Optuna's pool, its heartbeat, an advisory lock): 3 workers
    # stay far below PostgreSQL's default max_connections of 100
    assert 3 <= result.peak_connections["optuna"] <= 30
