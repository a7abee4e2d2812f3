"""How many trial starts per minute one PostgreSQL study sustains: the ceiling of the coordination.

    python benchmarks/coordination_ceiling.py                       # $KDSWEEP_TEST_POSTGRES, loopback
    python benchmarks/coordination_ceiling.py --procs 1 2 4 8 --prefill 0 2000 --seconds 20

Every process runs kdsweep's own trial loop (``coordination.run_trials``) on one study: the
claim lock (a PostgreSQL advisory lock), the stale-heartbeat and orphan checks, the count of
finished and running trials, ``ask()`` with the sampler reseeded from the trial count, and
Optuna's heartbeat thread, on the RDB storage a worker opens (``open_storage``). The objective
does what a trial does to the database and nothing else: five parameters drawn from kdsweep's
search space, the ``worker`` and run-id attributes, three intermediate values (epochs), the
result. No training and no MLflow, so the number is the most trial starts per minute the study
itself lets through; real workers add the MLflow server's load on top.

``--prefill N`` first adds N finished trials: the loop reads every trial of the study on each
start, and TPE reads them to sample, so a study slows as it grows. Each run gets a fresh
database on the server (a copy of the prefilled one; all dropped afterwards); the processes
connect over loopback only.

Printed per run: trial starts per minute over the window all processes share; the median time
one start holds the study's claim lock (starts are serialized by it, so 60 s / that time is the
most starts per minute any number of workers gets, when each has its own CPU); and the peak
number of PostgreSQL connections per worker (PostgreSQL's default max_connections is 100).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import time
import uuid
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STUDY = "ceiling"


def make_sampler(kind: str, n: int):
    import optuna

    return optuna.samplers.TPESampler(seed=n) if kind == "tpe" else optuna.samplers.RandomSampler(seed=n)


def objective(trial) -> float:
    trial.suggest_float("temperature", 2.0, 8.0)
    alpha = trial.suggest_float("alpha", 0.5, 0.95)
    trial.suggest_categorical("ema_decay", [0.0, 0.99])
    trial.suggest_float("lr", 0.03, 0.2, log=True)
    trial.suggest_categorical("width", [0.5])
    trial.set_user_attr("mlflow_run_id_seed0", uuid.uuid4().hex)
    for epoch in range(1, 4):
        trial.report(alpha * epoch / 3, epoch)
    return alpha


class TimedLocks:
    """kdsweep's PostgreSQL locks, timing how long each claim is held."""

    def __init__(self, url: str) -> None:
        from kdsweep.study import coordination

        self.inner, self.holds = coordination.locks_for(url), []

    def hold(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            with self.inner.hold(name):
                t0 = time.perf_counter()
                try:
                    yield
                finally:
                    if name.startswith("claim:"):
                        self.holds.append(time.perf_counter() - t0)
        return timed()


def worker(url: str, sampler: str, seconds: float, heartbeat: int, ready, start, out) -> None:
    import optuna

    from kdsweep.study import coordination
    from kdsweep.study.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    study = optuna.load_study(study_name=STUDY, storage=open_storage(url, heartbeat=heartbeat, grace=3 * heartbeat))
    ready.put(os.getpid())
    start.wait()  # all processes count over the same window, not from their own (slow) start
    locks = TimedLocks(url)
    ran = coordination.run_trials(study, objective, n_trials=10**9, locks=locks,
                                  make_sampler=lambda n: make_sampler(sampler, n), timeout=seconds, poll=0.05)
    out.put((ran, locks.holds))


def prefill(url: str, n: int) -> None:
    import optuna

    from kdsweep.study.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url)
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    d = optuna.distributions
    dists = {"temperature": d.FloatDistribution(2.0, 8.0), "alpha": d.FloatDistribution(0.5, 0.95),
             "ema_decay": d.CategoricalDistribution([0.0, 0.99]), "lr": d.FloatDistribution(0.03, 0.2, log=True),
             "width": d.CategoricalDistribution([0.5])}
    import random

    rng = random.Random(0)
    trials = [optuna.trial.create_trial(
        params={"temperature": rng.uniform(2, 8), "alpha": (a := rng.uniform(0.5, 0.95)), "ema_decay": 0.0,
                "lr": 0.1, "width": 0.5}, distributions=dists, value=a,
        intermediate_values={1: a / 3, 2: 2 * a / 3, 3: a}, user_attrs={"worker": "prefill:0"})
        for _ in range(n)]
    study.add_trials(trials)
    storage.remove_session()
    storage.engine.dispose()  # a database is copied only while nobody is connected to it


def create_db(admin, name: str, template: str | None = None) -> None:
    import sqlalchemy

    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))


def drop_db(admin, name: str) -> None:
    import sqlalchemy

    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def connections(admin, name: str) -> int:
    import sqlalchemy

    with admin.connect() as conn:
        return conn.execute(sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"),
                            {"d": name}).scalar()


def measure(server: str, admin, template: str, procs: int, sampler: str, seconds: float,
            heartbeat: int) -> tuple[float, float, float]:
    """(trial starts per minute, median claim hold in seconds, peak connections per worker)."""
    import statistics

    name = f"kdsweep_ceiling_{uuid.uuid4().hex[:8]}"
    create_db(admin, name, template)
    try:
        ctx = mp.get_context("spawn")
        ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
        ps = [ctx.Process(target=worker, args=(f"{server}/{name}", sampler, seconds, heartbeat, ready, start, out))
              for _ in range(procs)]
        for p in ps:
            p.start()
        for _ in ps:
            ready.get(timeout=300)
        start.set()
        peak, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            peak = max(peak, connections(admin, name))
            time.sleep(0.5)
        results = [out.get(timeout=120) for _ in ps]
        for p in ps:
            p.join(30)
        holds = [h for _, hs in results for h in hs]
        # no claim in the window (a starved machine): an infinite hold, printed as such
        hold = statistics.median(holds) if holds else float("inf")
        return sum(r for r, _ in results) * 60 / seconds, hold, peak / procs
    finally:
        drop_db(admin, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=os.environ.get("KDSWEEP_TEST_POSTGRES", ""),
                    help="postgresql://USER:PASSWORD@127.0.0.1:5432 (no database; default $KDSWEEP_TEST_POSTGRES)")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--prefill", type=int, nargs="+", default=[0, 2000])
    ap.add_argument("--sampler", choices=["random", "tpe"], nargs="+", default=["random", "tpe"])
    ap.add_argument("--seconds", type=float, default=20.0, help="how long each measurement runs")
    ap.add_argument("--heartbeat", type=int, default=10)
    args = ap.parse_args()
    # `kill` and timeout(1) too: the finally blocks drop the databases this run made
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.server.startswith("postgresql://"):
        sys.exit("--server: give postgresql://USER:PASSWORD@127.0.0.1:5432 (or set $KDSWEEP_TEST_POSTGRES)")
    if not any(h in args.server for h in ("@127.0.0.1", "@localhost", "@[::1]")):
        sys.exit("--server: loopback only (127.0.0.1, localhost): this benchmark loads the server")
    import sqlalchemy

    server = args.server.rstrip("/")
    admin = sqlalchemy.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    print(f"{'sampler':8} {'prefill':>7} {'procs':>5} {'starts/min':>10} {'claim ms':>8} {'ceiling/min':>11} "
          f"{'conns/worker':>12}")
    for n in args.prefill:
        template = f"kdsweep_ceiling_base_{uuid.uuid4().hex[:8]}"
        create_db(admin, template)
        try:
            prefill(f"{server}/{template}", n)
            for sampler in args.sampler:
                for procs in args.procs:
                    rate, hold, conns = measure(server, admin, template, procs, sampler, args.seconds, args.heartbeat)
                    print(f"{sampler:8} {n:7d} {procs:5d} {rate:10.0f} {hold * 1000:8.1f} {60 / hold:11.0f} "
                          f"{conns:12.1f}", flush=True)
        finally:
            drop_db(admin, template)


if __name__ == "__main__":
    main()
