"""Several workers on one PostgreSQL study: exact trial counts, train-once, dead workers retried.

The first tests drive ``coordination.run_trials`` in-process with a trivial objective (fast,
and they pin the counting logic); the last two run real ``kdsweep study worker`` processes on
the CIFAR subset against PostgreSQL and a real MLflow server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import signal_when, write_spec
from kdsweep.study import coordination
from kdsweep.study.storage import open_storage

STUDENT = {"arch": "resnet8", "width": 0.5, "recipe": {"epochs": 2, "batch_size": 64, "lr": 0.05}}


def open_shared(url: str, name: str, *, heartbeat: int = 1) -> optuna.Study:
    with coordination.locks_for(url).hold("open-storage"):  # as run_study does
        storage = open_storage(url, heartbeat=heartbeat, grace=2 * heartbeat)
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)


def quick_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    time.sleep(0.3)  # long enough that workers overlap
    return x


def test_threads_on_one_study_finish_exactly_n_trials(postgres_url):
    n_trials, errors, ran = 7, [], []

    def worker() -> None:
        try:
            study = open_shared(postgres_url, "exact")  # own storage and connections, like a process
            ran.append(coordination.run_trials(
                study, quick_objective, n_trials=n_trials, locks=coordination.locks_for(postgres_url),
                make_sampler=lambda n: optuna.samplers.RandomSampler(seed=n), poll=0.2))
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    trials = open_shared(postgres_url, "exact").trials
    # exactly n finished trials, none extra and none left running, each number once
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n_trials
    assert sorted(t.number for t in trials) == list(range(n_trials))
    assert sum(ran) == n_trials and len([r for r in ran if r > 0]) >= 2  # the work was shared
    # sampler reseeded per trial count: no two workers drew the same value
    assert len({t.params["x"] for t in trials}) == n_trials


def test_stale_running_trial_is_failed_and_retried(postgres_url):
    study = open_shared(postgres_url, "stale")
    # a worker that asked for a trial, beat once, and died (no further heartbeats)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: heartbeats belong to optimize()
        dead = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)  # past the grace period (2 s)

    ran = coordination.run_trials(study, quick_objective, n_trials=2, locks=coordination.locks_for(postgres_url),
                                  make_sampler=lambda n: optuna.samplers.RandomSampler(seed=n), poll=0.2)
    trials = open_shared(postgres_url, "stale").trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states
    assert states.count(TrialState.COMPLETE) == 2 and states.count(TrialState.FAIL) == 1
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    # the dead trial came back with its own parameters (RetryHeartbeatStaleTrialCallback)
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params["x"] == trials[dead.number].params["x"]
    assert ran == 2


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_trial_whose_process_died_before_its_first_heartbeat_is_failed_and_retried(backend, request, tmp_path):
    """Killed between ``ask()`` and the objective's first line: no heartbeat, no ``worker``."""
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path}/o.db"
    study = open_shared(url, "orphan", heartbeat=60)  # a heartbeat would take a minute to notice
    study.enqueue_trial({"x": 0.25})  # a queued retry: it has its parameters before the objective runs
    with pytest.warns(UserWarning, match="Heartbeat"):
        queued = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
        fresh = study.ask()  # no parameters yet: it did no work
    # 30 s: without the orphan check the loop would wait for the two RUNNING trials until then
    ran = coordination.run_trials(study, quick_objective, n_trials=2, locks=coordination.locks_for(url),
                                  make_sampler=lambda n: optuna.samplers.RandomSampler(seed=n), poll=0.2,
                                  timeout=30)
    trials = open_shared(url, "orphan", heartbeat=60).trials
    assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
    assert "died as trial 1 started" in trials[fresh.number].user_attrs["fail_reason"]
    assert [t.state for t in trials[2:]] == [TrialState.COMPLETE, TrialState.COMPLETE] and ran == 2
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == queued.number]
    assert len(retry) == 1 and retry[0].params == {"x": 0.25}  # the queued parameters came back
    assert not [t for t in trials if t.system_attrs.get("failed_trial") == fresh.number]


def test_trial_loop_runs_the_trial_another_worker_left_interrupted(postgres_url):
    """A requeued or preempted worker marked its trial interrupted and left: a worker that goes on
    runs that trial (from its checkpoint, in kdsweep) before any new one takes its place."""
    study = open_shared(postgres_url, "left")
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, params={"x": 0.125}, distributions=dist,
                                        user_attrs={"interrupted": True, "worker": "elsewhere:1"}))
    ran = coordination.run_trials(study, quick_objective, n_trials=1, locks=coordination.locks_for(postgres_url),
                                  make_sampler=lambda n: optuna.samplers.RandomSampler(seed=n), poll=0.2)
    trials = open_shared(postgres_url, "left").trials
    assert ran == 1 and [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == {"x": 0.125} and trials[1].system_attrs["failed_trial"] == 0


@pytest.mark.parametrize("when", ["mid-trial", "after-training"])
def test_worker_whose_trial_was_failed_as_stale_drops_it_and_goes_on(postgres_url, when, caplog):
    """A worker starved of CPU past the grace period: another worker failed its running trial and
    queued the retry. The starved worker logs one line, drops its copy and finishes the study;
    before, Optuna's UpdateFinishedTrialError (or tell's ValueError) ended the worker with a traceback."""
    name = f"starved-{when}"
    study, other = open_shared(postgres_url, name), open_shared(postgres_url, name)  # two workers' storages

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 0:  # what fail_stale_trials does from the other worker
            other._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            with pytest.warns(optuna.exceptions.ExperimentalWarning):  # the callback kdsweep's storage uses
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
            retry(other, other._storage.get_trial(trial._trial_id))
            if when == "mid-trial":
                trial.report(x, 0)  # the next epoch's report meets the finished trial
        return x

    with caplog.at_level("WARNING", logger="kdsweep.study.coordination"):
        ran = coordination.run_trials(study, objective, n_trials=2, locks=coordination.locks_for(postgres_url),
                                      make_sampler=lambda n: optuna.samplers.RandomSampler(seed=n), poll=0.2)
    trials = open_shared(postgres_url, name).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params
    assert ran == 2  # the dropped copy is not counted: the study still ends with n_trials finished
    assert [r.getMessage() for r in caplog.records if r.name == "kdsweep.study.coordination"] == [
        "trial 0 was failed as stale by another worker (its heartbeats came late); its result here is "
        "dropped and the trial is retried"]


def test_advisory_lock_excludes_another_session(postgres_url):
    import sqlalchemy

    locks = coordination.locks_for(postgres_url)
    other = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
    key = coordination.lock_key("teacher:abc")

    def try_lock() -> bool:
        with other.connect() as conn:
            got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            if got:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            return bool(got)

    with locks.hold("teacher:abc"):
        assert not try_lock()
    assert try_lock()


# -- real worker processes ------------------------------------------------------------------

def start_worker(spec: Path, workdir: Path, *extra: str) -> subprocess.Popen:
    """``kdsweep study worker SPEC`` in its own folder, as on its own machine."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "KDSWEEP_DATA_ROOT"}
    # one thread each: two workers share CI's two cores instead of spinning on four threads
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    return subprocess.Popen([sys.executable, "-m", "kdsweep", "study", "worker", str(spec), *extra],
                            cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(worker: subprocess.Popen, timeout: float) -> str:
    """The worker's output once it exits; a worker still running after ``timeout`` fails the test
    with what it printed, instead of a bare TimeoutExpired."""
    try:
        return worker.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        worker.kill()
        raise AssertionError(f"worker still running after {timeout:.0f}s:\n{worker.communicate()[0][-4000:]}") from None


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


def waiting_on_advisory_locks(url: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")).scalar()


def runs_by_role(tracking_uri: str, study: str) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    out: dict[str, list] = {}
    for run in runs:
        out.setdefault(run.data.tags.get("role"), []).append(run)
    return out


def test_two_workers_finish_exactly_n_trials_and_train_the_teacher_once(tmp_path, subset_root, postgres_db,
                                                                        mlflow_server):
    optuna_url = postgres_db("optuna")
    tracking = mlflow_server(postgres_db("mlflow"))  # the compose layout: two databases, one server
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="pair", n_trials=3, storage=optuna_url,
                      tracking_uri=tracking, student=STUDENT, confirm={"top_k": 2, "seeds": [100, 101]})
    # hold the study's first lock until both workers wait on it, so they really start together
    with coordination.locks_for(optuna_url).hold("begin:pair"):
        workers = [start_worker(spec, tmp_path / f"machine{i}") for i in range(2)]
        wait_for(lambda: waiting_on_advisory_locks(optuna_url) == 2 or any(w.poll() is not None for w in workers),
                 240, "both workers to reach the study")
    outputs = [finish(w, 600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    trials = optuna.load_study(study_name="pair", storage=optuna_url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # exactly n_trials, none extra
    assert sorted(t.number for t in trials) == [0, 1, 2]
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials

    runs = runs_by_role(tracking, "pair")
    assert len(runs["study"]) == 1
    # trained once, reused by the other: the teacher, and the baselines of seed 0 and the confirmation seeds
    assert len(runs["teacher"]) == 1
    assert sorted(r.data.params["seed"] for r in runs["baseline"]) == ["0", "100", "101"]
    # the confirmation stage, shared between the workers: each (trial, seed) once
    confirmed = sorted((r.data.tags["trial"], r.data.params["seed"]) for r in runs["confirm"])
    best_two = sorted(trials, key=lambda t: (-t.value, t.number))[:2]
    assert confirmed == sorted((str(t.number), s) for t in best_two for s in ("100", "101"))
    distilled = runs["distilled"]
    assert sorted(int(r.data.tags["trial"]) for r in distilled) == [0, 1, 2]  # one MLflow run per trial
    assert {r.info.run_id for r in distilled} == {t.user_attrs["mlflow_run_id_seed0"] for t in trials}
    assert {r.info.status for rs in runs.values() for r in rs if r.data.tags["role"] != "study"} == {"FINISHED"}


def test_sigkilled_worker_trial_is_retried_by_another_worker(tmp_path, subset_root, postgres_url, mlflow_server):
    tracking = mlflow_server()
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="killed", n_trials=2, storage=postgres_url,
                      tracking_uri=tracking, student=STUDENT)

    # one storage, one connection pool, for all the polling below (a new storage per look opened a
    # pool each time and ran PostgreSQL out of connections); made before any worker exists
    storage = optuna.storages.RDBStorage(postgres_url)

    def running() -> list:
        try:
            study = optuna.load_study(study_name="killed", storage=storage)
        except KeyError:
            return []
        return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]

    first = start_worker(spec, tmp_path / "a", "--heartbeat", "1")
    seen: list = []

    def trial_running() -> bool:  # and training: past its first epoch, every parameter drawn
        seen[:] = [t for t in running() if t.intermediate_values]
        return bool(seen)

    try:  # no cleanup, no tell(): the trial stays RUNNING
        signal_when(first, trial_running, signal.SIGKILL, 300)
    finally:
        if first.poll() is None:
            first.kill()
        output = first.communicate()[0]
    assert first.returncode == -signal.SIGKILL, output
    killed = seen[0].number
    assert [t.number for t in running()] == [killed]

    second = start_worker(spec, tmp_path / "b", "--heartbeat", "1")
    out = finish(second, 600)
    assert second.returncode == 0, out

    trials = optuna.load_study(study_name="killed", storage=postgres_url).trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states  # the second worker's heartbeat check failed it
    assert trials[killed].state == TrialState.FAIL
    assert states.count(TrialState.COMPLETE) == 2
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == trials[killed].params
    distilled = runs_by_role(tracking, "killed")["distilled"]
    assert len(distilled) == 2 and {r.info.status for r in distilled} == {"FINISHED"}


def test_confirmation_units_are_split_between_workers(postgres_url):
    """``confirm.share``: a unit whose lock another worker holds is left to the end, then run
    (here, as that worker's run would be reused, or trained if it died); each result in place."""
    from kdsweep.study.confirm import share

    order = []
    units = [(f"confirm:split:{n}", lambda n=n: order.append(n) or n) for n in ("a", "b", "c")]
    other = coordination.locks_for(postgres_url)  # another worker: its own session
    with other.hold("confirm:split:b"):
        assert share(units, coordination.locks_for(postgres_url)) == ["a", "b", "c"]
    assert order == ["a", "c", "b"]
    # one process (SQLite): every unit is its own, in order
    order.clear()
    assert share(units, coordination.ProcessLocks()) == ["a", "b", "c"] and order == ["a", "b", "c"]


def test_try_hold_is_false_while_another_session_or_thread_holds_the_lock(postgres_url):
    mine, theirs = coordination.locks_for(postgres_url), coordination.locks_for(postgres_url)
    with theirs.hold("x"):
        with mine.try_hold("x") as free:
            assert free is False
    with mine.try_hold("x") as free:
        assert free is True
        with theirs.try_hold("x") as other_free:
            assert other_free is False
    with theirs.try_hold("x") as free:  # released when the block ended
        assert free is True

    locks, seen = coordination.ProcessLocks(), []  # threads of one process (SQLite, jobs > 1)

    def look() -> None:
        with locks.try_hold("x") as free:
            seen.append(free)

    with locks.hold("x"):
        thread = threading.Thread(target=look)
        thread.start()
        thread.join(30)
    look()
    assert seen == [False, True]
