"""Trials that a dead or interrupted process left behind: failed, their runs closed, retried.

- A process killed with SIGKILL (or a power loss) cannot tell anyone: its trial stays RUNNING in
  Optuna and its MLflow run RUNNING. Optuna's heartbeat fails such a trial only once the grace
  period has passed (``storage.py``). A rerun on the same machine need not wait: the trial's
  ``worker`` user attribute (``host:pid``, set as the trial starts) names its process, and a pid
  that no longer runs means the trial is dead.
- A trial stopped by Ctrl-C, SIGTERM or a lost tracking server ends FAIL with the user attribute
  ``interrupted``: it did nothing wrong and deserves another go.

Both are retried the way Optuna's ``RetryHeartbeatStaleTrialCallback`` retries a stale trial: a
WAITING copy with the same parameters and user attributes (so the copy reopens the same MLflow
run and continues from the per-epoch checkpoint, which is keyed by the trial's config) and the
``failed_trial`` / ``retry_history`` system attributes; at most ``MAX_RETRY`` times.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdsweep.study.recorder import Recorder

MAX_RETRY = 3  # as storage.py's RetryHeartbeatStaleTrialCallback
RUN_ID_ATTR = "mlflow_run_id_seed"  # prefix of the user attributes holding a trial's MLflow run ids
# attributes of the failed attempt that a retry must not inherit
ATTEMPT_ATTRS = ("fail_reason", "interrupted", "worker")


def owner() -> str:
    """``host:pid`` of this process, the format of the trial attribute ``worker``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs on this machine (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # runs, as another user
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        # killed but not yet reaped by its parent: state Z, it will never beat again
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def dead_owner(trial: FrozenTrial) -> str | None:
    """The ``host:pid`` of a RUNNING trial whose process is gone from this machine, else None.

    Trials of other machines (or without the attribute) are left to Optuna's heartbeat.
    """
    worker = trial.user_attrs.get("worker")
    if trial.state != TrialState.RUNNING or not isinstance(worker, str):
        return None
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return None
    return worker if process_gone(int(pid)) else None


def run_ids(trial: FrozenTrial) -> list[str]:
    return [v for k, v in sorted(trial.user_attrs.items()) if k.startswith(RUN_ID_ATTR) and isinstance(v, str)]


def retried(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials that already have a retry."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def retry(study: optuna.Study, trial: FrozenTrial, *, max_retry: int = MAX_RETRY) -> bool:
    """Enqueue a copy of ``trial``; False when it has been retried ``max_retry`` times already."""
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    history = [*system_attrs["retry_history"], trial.number]
    if len(history) > max_retry:
        return False
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params=trial.params,
                                        distributions=trial.distributions, user_attrs=user_attrs,
                                        system_attrs={**system_attrs, "retry_history": history}))
    return True


def fail_dead(study: optuna.Study, trial: FrozenTrial, worker: str, recorder: Recorder) -> bool:
    """Mark a dead process's trial FAIL with the reason, close its MLflow runs as FAILED.

    False when another process got there first (the trial is no longer RUNNING).
    """
    reason = f"process {worker} died during trial {trial.number} (killed or crashed)"
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)  # not its own fault: retry it
        for run_id in run_ids(trial):
            recorder.fail(run_id, reason)
        return storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def recover(study: optuna.Study, recorder: Recorder) -> list[int]:
    """Fail the trials of dead processes and retry those and the interrupted ones.

    Returns the numbers of the trials that were retried. Run it before new trials start (the
    caller holds the study's claim lock when several workers share it).
    """
    for trial in study.get_trials(deepcopy=False):
        worker = dead_owner(trial)
        if worker is not None:
            fail_dead(study, trial, worker, recorder)
    return retry_interrupted(study)


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Retry the interrupted trials not retried yet; returns their numbers.

    The trial loop calls it too (under the claim lock), so a worker that goes on runs the trial
    a preempted or requeued worker left, from its checkpoint, instead of a new one in its place.
    """
    # failed trials first: the loop calls this before every trial, and only when one was
    # interrupted is the whole study (with the retries' histories) read
    interrupted = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                   if t.user_attrs.get("interrupted")]
    if not interrupted:
        return []
    done = retried(study.get_trials(deepcopy=False))
    return [t.number for t in interrupted if t.number not in done and retry(study, t)]
