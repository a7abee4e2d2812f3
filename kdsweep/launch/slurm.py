"""A SLURM array job of ``kdsweep study worker``: one worker per array task, one log per task.

What the script does and why:

- ``--requeue``: a preempted task (or one on a failed node) goes back into the queue; its worker
  marked its trial interrupted on SIGTERM, and the requeued worker resumes it from its last epoch.
- ``--signal=B:TERM@120``: 120 s before the time limit SLURM sends TERM to this script alone. The
  script passes it to the worker, waits until the worker has marked its trial interrupted, and
  requeues its own task, so a time limit loses no trial either. A cancelled, requeued or
  preempted job gets TERM in every process, the worker too, so the script does not send it twice
  (a second TERM would cut the worker's own clean-up short).
- The worker runs as a child with a parent-death signal (``setpriv --pdeathsig KILL``): if the
  script is killed, the worker dies with it instead of training on outside the allocation.
- No password in the script: the store URLs are written without them; the job inherits them
  from the submitting environment (``sbatch --export=ALL``) or sources ``--env-file`` at start.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kdsweep.errors import LaunchError
from kdsweep.study.spec import shown

MEM = re.compile(r"^\d+[KMGT]?$")
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}(,[A-Za-z0-9_.-]{1,64}){0,15}$")
TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # sbatch --time: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
WARN_SECONDS = 120  # --signal=B:TERM@120: time for the last epoch's checkpoint and the interrupt record


@dataclass(frozen=True)
class SlurmJob:
    study: str
    workers: int
    command: list[str]  # the worker's command line, without passwords
    workdir: Path  # where the worker runs: its mlruns/ (checkpoints of trials in progress) is here
    log_dir: Path
    gpus_per_worker: int = 1
    cpus_per_worker: int | None = None
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    sbatch_args: tuple[str, ...] = ()
    env_file: Path | None = None
    # each run on this many processes of the task's node (the worker's --processes), one GPU each
    processes_per_worker: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise LaunchError(f"--workers={self.workers}: give 1 or more")
        if self.mem is not None and not MEM.match(self.mem):
            raise LaunchError(f"--mem={shown(self.mem, 60)}: give a size as sbatch takes it, e.g. 16G or 4000M")
        if self.time is not None and not TIME.match(self.time):
            raise LaunchError(f"--time={shown(self.time, 60)}: give minutes or [D-]HH:MM:SS, e.g. 4:00:00")
        for flag, value in (("--partition", self.partition), ("--account", self.account)):
            # a line break would start a new line of the script: a command the job would run
            if value is not None and not SLURM_NAME.match(value):
                raise LaunchError(f"{flag}={shown(value, 60)}: give a SLURM name (letters, digits, '_', '-', '.'; "
                                  "partitions separated by ',')")
        for arg in self.sbatch_args:
            if not arg.startswith("--") or "\n" in arg or len(arg) > 200:
                raise LaunchError(f"--sbatch-arg={shown(arg, 60)}: give one long sbatch option, e.g. --qos=long")


def render_script(job: SlurmJob) -> str:
    """The sbatch script; pure, so tests read exactly what would be submitted."""
    d = [f"--job-name=kdsweep-{job.study}", f"--array=0-{job.workers - 1}", "--requeue",
         f"--signal=B:TERM@{WARN_SECONDS}", "--open-mode=append", "--export=ALL",
         f"--chdir={job.workdir}", f"--output={job.log_dir}/%A_%a.log", "--ntasks=1"]
    if job.gpus_per_worker:
        d.append(f"--gres=gpu:{job.gpus_per_worker}")
    for flag, value in (("cpus-per-task", job.cpus_per_worker), ("mem", job.mem), ("partition", job.partition),
                        ("account", job.account), ("time", job.time)):
        if value is not None:
            d.append(f"--{flag}={value}")
    d += list(job.sbatch_args)
    lines = ["#!/bin/bash",
             f"# kdsweep launch slurm: {job.workers} workers of study {job.study}, one per array task.",
             "# Written by kdsweep; passwords are not in this file (see kdsweep/launch/slurm.py).",
             *([f"# Each run on {job.processes_per_worker} data-parallel processes started by the worker in this "
                "task (study worker --processes), one GPU each; they rendezvous on 127.0.0.1 of the node."]
               if job.processes_per_worker > 1 else []),
             *(f"#SBATCH {shlex.quote(x)}" for x in d), "set -u"]
    if job.env_file is not None:
        lines += [f"set -a; . {shlex.quote(str(job.env_file))}; set +a  # passwords (mode 600, checked at launch)"]
    lines += [
        'echo "kdsweep worker: task ${SLURM_ARRAY_TASK_ID} of job ${SLURM_ARRAY_JOB_ID}, restart '
        '${SLURM_RESTART_COUNT:-0}, on $(hostname) at $(date -Is)"',
        "deathsig=(); command -v setpriv >/dev/null && deathsig=(setpriv --pdeathsig KILL --)",
        f'"${{deathsig[@]}}" {shlex.join(job.command)} &',
        "worker=$! trapped=0 requeue=0",
        "on_term() {",
        "  trapped=1",
        "  # only the time-limit warning comes to this shell alone: then pass it on and requeue after",
        '  local end; end=$(date -d "$(squeue -h -j "$SLURM_JOB_ID" -o %e | head -n1)" +%s 2>/dev/null) || end=0',
        f'  if [ "$end" -gt 0 ] && [ $((end - $(date +%s))) -le {WARN_SECONDS + 60} ]; then',
        '    requeue=1; kill -TERM "$worker" 2>/dev/null',
        "  fi",
        "}",
        "trap on_term TERM",
        'wait "$worker"; code=$?',
        'while [ "$trapped" = 1 ]; do trapped=0; wait "$worker"; code=$?; done',
        'if [ "$requeue" = 1 ] && [ "$code" = 130 ]; then',
        '  echo "kdsweep worker: time limit near, trial marked interrupted; requeueing this task"',
        '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "fi",
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def submit(script: Path, env: dict[str, str]) -> str:
    """``sbatch --parsable SCRIPT``; returns the job id."""
    try:
        done = subprocess.run(["sbatch", "--parsable", str(script)], env=env, capture_output=True, text=True,
                              timeout=60)
    except FileNotFoundError:
        raise LaunchError("sbatch: not found; run kdsweep launch slurm on a SLURM login node "
                          "(or --dry-run to print the script)") from None
    except subprocess.TimeoutExpired:
        raise LaunchError("sbatch: no answer from the SLURM controller within 60 s") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise LaunchError(f"sbatch {script}: {why}")
    return done.stdout.strip().split(";")[0]
