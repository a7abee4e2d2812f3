"""kdsweep launch slurm on a real SLURM: a one-node cluster (munged, slurmctld, slurmd) in a temp folder.

The fixture writes a slurm.conf for this machine (its real CPUs and memory, from ``slurmd -C``),
its own ports and state folders, starts the three daemons and stops them afterwards. It skips only
where they cannot start (not installed, not root), and fails instead under
KDSWEEP_REQUIRE_SERVICES=1 (CI). Each test submits with ``kdsweep launch slurm`` and checks the
PostgreSQL study and the MLflow server the array tasks shared.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import free_port, require_or_skip, run_cli, write_spec

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch")
STUDENT = {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 3, "batch_size": 64, "lr": 0.05}}
TEACHER = {"arch": "resnet8", "width": 0.25, "recipe": {"epochs": 1, "batch_size": 64, "lr": 0.05}}


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> str:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: {done.stderr.strip()}")
        return done.stdout

    def job(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job`` of every task of the array, as key=value dicts."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]

    def wait_done(self, job_id: str, timeout: float) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.job(job_id)
            if tasks and all(t["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for t in tasks):
                return tasks
            time.sleep(1)
        raise AssertionError(f"job {job_id} not done after {timeout:.0f} s: {self.job(job_id)}\n{self.logs()}")

    def release_requeued(self, task: str, timeout: float = 180) -> None:
        """Start a requeued task now: SLURM holds it back about 2 minutes (Reason=BeginTime), which
        an admin (or a test with nothing to wait for) lifts with ``scontrol update StartTime=now``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            (info,) = self.job(task)
            if info["JobState"] == "PENDING" and info.get("Reason") == "BeginTime":
                self.run("scontrol", "update", f"JobId={task}", "StartTime=now")
                return
            time.sleep(0.5)
        raise AssertionError(f"{task} was not held back after its requeue within {timeout:.0f} s: {self.job(task)}")

    def logs(self) -> str:
        return "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted(self.root.rglob("*.log")))


def start_cluster(root: Path) -> Cluster:
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        require_or_skip(f"SLURM/munge not installed ({', '.join(missing)}): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        require_or_skip("slurmd runs jobs as their users and must run as root; these tests are not root")
    cluster = Cluster(root)
    root.chmod(0o755)  # munged: every folder above its socket must be reachable
    for d in ("state", "spool"):
        (root / d).mkdir()
    node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    host = re.search(r"NodeName=(\S+)", node)[1]
    cluster.conf.write_text(f"""\
ClusterName=kdsweeptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
{node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    steps = [["mungekey", "--create", f"--keyfile={root}/munge.key"],
             ["munged", "--force", f"--socket={root}/munge.socket", f"--key-file={root}/munge.key",
              f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid", f"--seed-file={root}/munged.seed"],
             ["slurmctld", "-f", str(cluster.conf)], ["slurmd", "-f", str(cluster.conf)]]
    for cmd in steps:
        done = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            stop_cluster(cluster)
            require_or_skip(f"{cmd[0]} did not start: {(done.stderr.strip() or cluster.logs())[-500:]}")
    deadline = time.monotonic() + 60
    while "idle" not in cluster.run("sinfo", "-h", "-o", "%T", check=False):
        if time.monotonic() > deadline:
            logs = cluster.logs()
            stop_cluster(cluster)
            require_or_skip(f"the SLURM node did not come up within 60 s: {logs[-1500:]}")
        time.sleep(0.5)
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    subprocess.run(["scancel", "--full", "--user", "root"], env=cluster.env, capture_output=True, timeout=60)
    for name in ("slurmd", "slurmctld", "munged"):
        pid_file = cluster.root / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):  # until it is gone (its pid no longer answers)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    stop_cluster(cluster)


def launch(cluster: Cluster, spec: Path, workdir: Path, *extra: str) -> str:
    env = {"SLURM_CONF": str(cluster.conf), "OMP_NUM_THREADS": "1"}  # the job inherits this environment
    result = run_cli("launch", "slurm", str(spec), "--gpus-per-worker", "0", "--cpus-per-worker", "1", "--mem", "2G",
                     "--device", "cpu", *extra, cwd=workdir, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = re.match(r"submitted job (\d+):", result.stdout)[1]
    assert f"squeue -j {job_id}" in result.stdout
    return job_id


def study_trials(url: str, name: str) -> list:
    return optuna.load_study(study_name=name, storage=url).trials


def running_trial(storage, name: str, epochs: int):
    """A RUNNING trial between its first and last epoch, or None."""
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return None
    return next((t for t in trials if t.state == TrialState.RUNNING and 1 <= len(t.intermediate_values) < epochs
                 and "worker" in t.user_attrs), None)


def act_mid_trial(storage, name: str, epochs: int, act, timeout: float = 300):
    """Call ``act(trial, pid)`` once a worker is mid-trial, with the worker paused meanwhile (a tiny epoch
    would otherwise end between the look and the act). Returns the trial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trial = running_trial(storage, name, epochs)
        if trial is not None:
            pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGSTOP)
            try:
                again = running_trial(storage, name, epochs)
                if again is not None and again.number == trial.number:
                    act(again, pid)
                    return again
            finally:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        time.sleep(0.1)
    raise AssertionError(f"no worker was mid-trial within {timeout:.0f} s")


def task_of(pid: int) -> str:
    """``JOBID_TASK`` of the array task a worker process belongs to (SLURM put it in its environment)."""
    env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def test_two_task_array_finishes_exactly_n_trials(slurm, tmp_path, subset_root, postgres_db, mlflow_server):
    optuna_url, tracking = postgres_db("optuna"), mlflow_server(postgres_db("mlflow"))
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="array", n_trials=3, teacher=TEACHER,
                      student={**STUDENT, "recipe": {**STUDENT["recipe"], "epochs": 1}})
    job = launch(slurm, spec, tmp_path, "--workers", "2", "--storage", optuna_url, "--tracking-uri", tracking)
    tasks = slurm.wait_done(job, 480)
    logs = tmp_path / "mlruns" / "launch" / "array"
    assert sorted(p.name for p in logs.glob("*.log")) == [f"{job}_0.log", f"{job}_1.log"]
    assert [(t["JobState"], t["ExitCode"]) for t in tasks] == [("COMPLETED", "0:0")] * 2, slurm.logs()
    trials = study_trials(optuna_url, "array")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # exactly n_trials between the two tasks
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both tasks ran trials
    password = optuna_url.split(":")[2].split("@")[0]
    assert password not in (logs / "worker.sbatch").read_text()


def test_task_killed_mid_trial_and_the_study_still_finishes(slurm, tmp_path, subset_root, postgres_url,
                                                            mlflow_server):
    tracking = mlflow_server()
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="killed", n_trials=2, teacher=TEACHER,
                      student=STUDENT)
    job = launch(slurm, spec, tmp_path, "--workers", "2", "--heartbeat", "1", "--storage", postgres_url,
                 "--tracking-uri", tracking)
    storage = optuna.storages.RDBStorage(postgres_url)  # one pool for all the polling
    killed_task = []

    def kill(trial, pid):
        killed_task.append(task_of(pid))
        # SLURM turns a plain `scancel --signal=KILL` into a graceful cancel (TERM first); --batch sends
        # the KILL itself to the task's script, and the worker dies with it (its parent-death signal)
        slurm.run("scancel", "--signal=KILL", "--batch", killed_task[0])

    killed = act_mid_trial(storage, "killed", STUDENT["recipe"]["epochs"], kill)
    tasks = {t["ArrayTaskId"]: t for t in slurm.wait_done(job, 480)}
    survivor = "1" if killed_task[0].endswith("_0") else "0"
    assert tasks[killed_task[0].split("_")[1]]["JobState"] == "FAILED"
    assert tasks[survivor]["JobState"] == "COMPLETED", slurm.logs()
    trials = study_trials(postgres_url, "killed")
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and states.count(TrialState.COMPLETE) == 2
    assert trials[killed.number].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == killed.params


def test_task_requeued_mid_trial_resumes_its_trial_from_the_last_epoch(slurm, tmp_path, subset_root, postgres_url,
                                                                       mlflow_server):
    from mlflow.tracking import MlflowClient

    tracking = mlflow_server()
    epochs = STUDENT["recipe"]["epochs"]
    spec = write_spec(tmp_path / "spec.yaml", subset_root, name="requeued", n_trials=1, teacher=TEACHER,
                      student=STUDENT)
    job = launch(slurm, spec, tmp_path, "--workers", "1", "--storage", postgres_url, "--tracking-uri", tracking)
    storage = optuna.storages.RDBStorage(postgres_url)
    done_before = []

    def requeue(trial, pid):
        done_before.append(len(trial.intermediate_values))
        slurm.run("scontrol", "requeue", task_of(pid))  # as a preemption does: TERM to the task, back in the queue

    interrupted = act_mid_trial(storage, "requeued", epochs, requeue)
    slurm.release_requeued(f"{job}_0")  # back in the queue, held ~2 minutes by SLURM: start it now
    (task,) = slurm.wait_done(job, 420)
    log = (tmp_path / "mlruns" / "launch" / "requeued" / f"{job}_0.log").read_text()
    assert (task["JobState"], task["Restarts"]) == ("COMPLETED", "1"), log
    assert "restart 1," in log and "Interrupted" in log

    trials = study_trials(postgres_url, "requeued")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs.get("interrupted") and trials[1].system_attrs["failed_trial"] == interrupted.number
    run_id = trials[1].user_attrs["mlflow_run_id_seed0"]
    assert run_id == interrupted.user_attrs["mlflow_run_id_seed0"]  # the retry reopened the same MLflow run
    steps = [m.step for m in MlflowClient(tracking).get_metric_history(run_id, "test_acc")]
    # every epoch logged once: the requeued task went on from its checkpoint instead of starting again
    assert sorted(steps) == list(range(1, epochs + 1)), (steps, done_before)


def test_near_the_time_limit_the_script_stops_the_worker_and_requeues_its_task(slurm, tmp_path):
    """``--signal=B:TERM@120`` with a 2-minute limit: the warning comes at once. A stand-in worker
    (exits 130 on SIGTERM, as ``kdsweep study worker`` does once its trial is marked interrupted)
    keeps this test to seconds; the real worker's side is the requeue test above."""
    import sys

    from kdsweep.launch import slurm as launch_slurm

    worker = [sys.executable, "-c", "import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: (print('worker: TERM', flush=True), sys.exit(130)))\n"
              "print('worker: up', flush=True)\ntime.sleep(600)"]
    job = launch_slurm.SlurmJob(study="limit", workers=1, command=worker, workdir=tmp_path, log_dir=tmp_path,
                                gpus_per_worker=0, mem="100M", time="2")
    (tmp_path / "job.sh").write_text(launch_slurm.render_script(job))
    job_id = slurm.run("sbatch", "--parsable", str(tmp_path / "job.sh")).strip()
    try:
        deadline = time.monotonic() + 150
        while (slurm.job(job_id) or [{}])[0].get("Restarts") != "1":
            assert time.monotonic() < deadline, f"not requeued: {slurm.job(job_id)}\n{slurm.logs()}"
            time.sleep(1)
        log = (tmp_path / f"{job_id}_0.log").read_text()
        assert "worker: TERM" in log and "requeueing this task" in log, log
        assert slurm.job(job_id)[0]["JobState"] == "PENDING"  # back in the queue, to start again
    finally:
        slurm.run("scancel", job_id, check=False)
