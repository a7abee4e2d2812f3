"""The worker's command line in a generated job: the launch flags, passed on without passwords."""

from __future__ import annotations

from pathlib import Path

from kdsweep.launch.credentials import Stores

PASSED = ("data_root", "n_trials", "device", "jobs", "processes")  # override flags a worker takes as they are
STORE_KEYS = ("storage", "tracking_uri")  # always given as flags, so a --set of them is dropped


def worker_args(flags: dict, stores: Stores, heartbeat: int, *, data_root: str | None = None) -> list[str]:
    """``--storage URL --tracking-uri URL --heartbeat H`` and the other override flags given.

    ``data_root`` replaces the flag's value (a path inside a container, or an absolute one).
    """
    args = ["--storage", stores.storage, "--tracking-uri", stores.tracking_uri, "--heartbeat", str(heartbeat)]
    values = {**{k: flags.get(k) for k in PASSED}, **({"data_root": data_root} if data_root else {})}
    for name, value in values.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    for item in flags.get("set_") or ():
        if item.split("=", 1)[0].strip() not in STORE_KEYS:
            args += ["--set", item]
    return args


def check_processes(processes: int, gpus: int) -> None:
    """``--processes-per-worker``: at least 1, and on GPUs one GPU per process (NCCL's rule)."""
    from kdsweep.errors import LaunchError

    if processes < 1:
        raise LaunchError(f"--processes-per-worker={processes}: give 1 or more")
    if processes > 1 and gpus not in (0, processes):
        raise LaunchError(f"--processes-per-worker={processes} with --gpus-per-worker={gpus}: each process trains "
                          f"on a GPU of its own; give --gpus-per-worker {processes} (or 0 for CPU processes)")


def absolute(path: Path | str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())
