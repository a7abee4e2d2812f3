"""Soak: N `kdsweep study worker` processes on one PostgreSQL study and one real MLflow server.

    python benchmarks/workers_soak.py --postgres postgresql://postgres:PASS@127.0.0.1:5432 \\
        --data-root ../shared/datasets/cifar10-subset --workers 8 --trials 200

Makes two databases of its own on that server (``soak_<hex>_optuna``, ``soak_<hex>_mlflow``; dropped
at the end), starts ``mlflow server`` on a free loopback port with the second one as backend store,
and runs the workers on tiny trials (300 training images, one epoch, a resnet8 x0.25 student), so
what is measured is the coordination: the claim lock, trial counting, heartbeats, MLflow calls.

Checked, and the exit code is 1 when any fails: exactly T finished trials, no trial number twice,
none RUNNING or WAITING, no "too many clients" in any worker's output, every worker exit 0, and one
MLflow run per finished trial, FINISHED. Printed: the trials per minute sustained (first trial
start to last trial end) and the peak number of PostgreSQL connections (pg_stat_activity, polled
every 0.2 s), for the study's database, MLflow's, and the whole server.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STUDY = "soak"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-subset"
TINY = {"epochs": 1, "batch_size": 64, "lr": 0.05}


@dataclass
class SoakResult:
    workers: int
    trials: int
    seconds: float  # first worker started to last worker ended
    trials_per_minute: float  # first trial started to last trial finished
    peak_connections: dict[str, int]  # optuna / mlflow / server: most seen at once
    states: dict[str, int]
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        peak = self.peak_connections
        return [f"{self.workers} workers, {self.trials} trials: {self.trials_per_minute:.1f} trials/min sustained, "
                f"{self.seconds:.0f} s wall in all",
                f"peak PostgreSQL connections: study database {peak['optuna']}, MLflow database {peak['mlflow']}, "
                f"whole server {peak['server']} (others' sessions included)",
                f"trial states: {self.states}",
                *(f"PROBLEM: {p}" for p in self.problems)]


class ConnectionPeak:
    """Polls pg_stat_activity in a thread and keeps the most connections seen per database."""

    def __init__(self, admin_url: str, databases: dict[str, str], every: float = 0.2) -> None:
        import sqlalchemy

        self.engine = sqlalchemy.create_engine(admin_url, poolclass=sqlalchemy.pool.NullPool)
        self.databases, self.every = databases, every
        self.peak = {label: 0 for label in (*databases, "server")}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        import sqlalchemy

        query = sqlalchemy.text("SELECT datname, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                "GROUP BY datname")
        with self.engine.connect() as conn:  # one connection for the whole soak, counted in "server"
            while not self._stop.is_set():
                counts = dict(conn.execute(query).all())
                conn.commit()
                for label, name in self.databases.items():
                    self.peak[label] = max(self.peak[label], counts.get(name, 0))
                self.peak["server"] = max(self.peak["server"], sum(counts.values()))
                self._stop.wait(self.every)

    def __enter__(self) -> "ConnectionPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.dispose()


def make_databases(server_url: str, prefix: str) -> dict[str, str]:
    """Two fresh databases, ``<prefix>_optuna`` and ``<prefix>_mlflow`` (both engines keep an
    alembic_version table, so they cannot share one); returns label -> database name."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    names = {"optuna": f"{prefix}_optuna", "mlflow": f"{prefix}_mlflow"}
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    return names


def drop_databases(server_url: str, names: dict[str, str]) -> None:
    import sqlalchemy

    admin = sqlalchemy.create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def write_spec(path: Path, data_root: Path, *, trials: int, storage: str, tracking_uri: str) -> Path:
    spec = {
        "name": STUDY, "seeds": [0], "device": "cpu", "sampler": "random", "pruner": "none", "n_trials": trials,
        "data": {"dataset": "cifar10", "root": str(data_root), "limit_per_file": 60},  # 300 train, 60 test
        "teacher": {"arch": "resnet8", "width": 0.25, "recipe": TINY},
        "student": {"arch": "resnet8", "width": 0.25, "recipe": TINY},
        "search": {"kd": {"temperature": {"low": 2.0, "high": 6.0}, "alpha": {"low": 0.5, "high": 0.9}}},
        "storage": storage, "tracking_uri": tracking_uri,
        # no view table: each worker (a machine of its own) would compute it, one after another under the
        # study's table lock, before its first trial
        "teacher_table": "off",
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def start_workers(spec: Path, folder: Path, n: int) -> list[tuple[subprocess.Popen, Path]]:
    env = {k: v for k, v in os.environ.items() if k != "KDSWEEP_DATA_ROOT"}
    # one thread each: N workers share the machine's cores instead of each spinning on all of them
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    workers = []
    for i in range(n):
        home = folder / f"worker{i}"  # own folder, as on its own machine: checkpoints come through the server
        home.mkdir(parents=True, exist_ok=True)
        log = home / "worker.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "kdsweep", "study", "worker", str(spec)], cwd=home, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        workers.append((proc, log))
    return workers


def check(storage: str, tracking_uri: str, trials: int, outputs: list[tuple[int, str]]) -> tuple[list[str], dict, float]:
    """(problems, trial states, trials per minute) of a finished soak."""
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    problems = []
    for i, (code, text) in enumerate(outputs):
        if code != 0:
            problems.append(f"worker {i} exited {code}: {text.strip().splitlines()[-1:] or ''}")
        if "too many clients" in text:
            problems.append(f"worker {i}: PostgreSQL said 'too many clients'")
    try:
        all_trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    except KeyError:  # no worker got as far as creating the study
        return problems + [f"no study {STUDY!r} in the storage: no worker started it"], {}, 0.0
    states: dict[str, int] = {}
    for t in all_trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    done = [t for t in all_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if len(done) != trials:
        problems.append(f"{len(done)} finished trials, not {trials}")
    numbers = [t.number for t in all_trials]
    if len(set(numbers)) != len(numbers):
        problems.append("a trial number appears twice")
    left = [t.number for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    if left:
        problems.append(f"trials left RUNNING or WAITING: {left}")

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([exp.experiment_id], "tags.role = 'distilled'", max_results=50000) if exp else []
    expected = [t.user_attrs.get("mlflow_run_id_seed0") for t in done]
    by_id: dict[str, int] = {}
    for r in runs:
        by_id[r.info.run_id] = by_id.get(r.info.run_id, 0) + 1
    if sorted(expected) != sorted(by_id) or any(n != 1 for n in by_id.values()):
        problems.append(f"{len(runs)} distilled MLflow runs for {len(done)} finished trials")
    not_finished = [r.info.run_id for r in runs if r.info.status != "FINISHED"]
    if not_finished:
        problems.append(f"MLflow runs not FINISHED: {not_finished[:5]}")
    trial_tags = [r.data.tags.get("trial") for r in runs]
    if len(set(trial_tags)) != len(trial_tags):
        problems.append("two MLflow runs carry the same trial number")

    starts = [t.datetime_start for t in done if t.datetime_start]
    ends = [t.datetime_complete for t in done if t.datetime_complete]
    minutes = (max(ends) - min(starts)).total_seconds() / 60 if starts and ends else 0.0
    return problems, states, (len(done) / minutes if minutes > 0 else 0.0)


def soak(server_url: str, *, workers: int, trials: int, data_root: Path, folder: Path,
         timeout: float = 3600, server_workers: int = 2) -> SoakResult:
    """Run the soak against the PostgreSQL server ``server_url`` (no database name) and check it."""
    from kdsweep.tracking.server import ServerOptions, launch

    server_url = server_url.rstrip("/")
    # each worker runs in a folder of its own: paths handed to it must not be relative to this one
    folder, data_root = folder.resolve(), data_root.resolve()
    names = make_databases(server_url, f"soak_{uuid.uuid4().hex[:10]}")  # first: a wrong URL creates nothing
    server, procs = None, []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        opts = ServerOptions(port=free_port(), backend_store_uri=f"{server_url}/{names['mlflow']}",
                             artifacts_destination=str(folder / "server" / "artifacts"), workers=server_workers,
                             log_file=folder / "server" / "server.log")
        server = launch(opts, wait=300)
        storage = f"{server_url}/{names['optuna']}"
        spec = write_spec(folder / "soak.yaml", data_root, trials=trials, storage=storage, tracking_uri=server.url)
        with ConnectionPeak(f"{server_url}/postgres", names) as peak:
            started = time.monotonic()
            procs = start_workers(spec, folder, workers)
            outputs = []
            for proc, log in procs:
                try:
                    proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                outputs.append((proc.returncode, log.read_text(errors="replace")))
            seconds = time.monotonic() - started
        problems, states, rate = check(storage, server.url, trials, outputs)
        return SoakResult(workers, trials, seconds, rate, dict(peak.peak), states, problems)
    finally:
        for proc, _ in procs:  # interrupted: no worker outlives the soak (they would wait for the server)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if server is not None:
            server.stop()
        drop_databases(server_url, names)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--postgres", default=os.environ.get("KDSWEEP_TEST_POSTGRES"),
                   help="postgresql://USER:PASSWORD@HOST:PORT, no database (default $KDSWEEP_TEST_POSTGRES)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--folder", type=Path, default=Path("soak-run"), help="Where workers and the server keep files.")
    p.add_argument("--json", type=Path, help="Also write the result here.")
    args = p.parse_args(argv)
    if not args.postgres:
        p.error("--postgres (or $KDSWEEP_TEST_POSTGRES) is required")
    import sqlalchemy.exc

    from kdsweep.stores import masked

    try:
        result = soak(args.postgres, workers=args.workers, trials=args.trials, data_root=args.data_root,
                      folder=args.folder)
    except sqlalchemy.exc.OperationalError as exc:  # wrong password, nothing listening: one line
        reason = str(exc.orig or exc).strip().splitlines()[0][:200]
        print(f"Error: --postgres {masked(args.postgres)}: {reason}", file=sys.stderr)
        return 2
    for line in result.lines():
        print(line)
    if args.json:
        args.json.write_text(json.dumps(result.__dict__, indent=2))
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
