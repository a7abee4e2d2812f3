"""One run on several processes: ``torch.distributed`` data parallel (DDP) around the one training loop.

What changes in a run of N processes (see :class:`kdsweep.core.trainer.Run`):

- Batches: the global batch is ``cfg.batch_size``; every process draws the same permutation and
  augmentation per (seed, epoch) and takes its ``batch_size / N`` slice of each global batch
  (``DeviceLoader(shard=...)``), so one process with batch B and N processes with B/N each see the
  same images in the same steps.
- Gradients: ``DistributedDataParallel`` averages them over the processes after each backward, so
  every process keeps the same weights and takes the same optimizer and learning-rate steps.
- BatchNorm: per-process statistics over its B/N images, with rank 0's running statistics broadcast
  to the others at every forward (DDP's default ``broadcast_buffers=True``), not SyncBatchNorm
  (SyncBatchNorm runs on GPUs only, and per-process BN is what DDP users get by default).
  At the end of each epoch rank 0's buffers are the ones evaluated and checkpointed.
- EMA: every process keeps the average of the same weights; rank 0's is evaluated and saved.
- Side effects: only rank 0 evaluates, writes checkpoints and calls ``on_epoch`` (MLflow, Optuna);
  it then broadcasts whether the run goes on, so a pruned, diverged or early-stopped run stops on
  every process. Each epoch's loss and accuracy are summed over the processes first.
- Backends: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU.

Processes are started by :func:`train_on` (rank 0 is the calling process, so callbacks, MLflow
and Optuna objects stay where they are; ranks 1..N-1 are spawned), or by ``torchrun`` / SLURM
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; :func:`from_env`).
A killed process makes the others fail at their next collective; the rerun resumes from rank 0's
last checkpoint like any killed run.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.distributed as dist

from kdsweep.errors import KdsweepError

# how long a collective waits for a peer: a process that died mid-step fails the others after this
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class Ranks:
    rank: int  # 0 logs, checkpoints and reports
    world: int  # number of processes
    local_rank: int = 0  # the GPU this process uses on its machine

    @property
    def main(self) -> bool:
        return self.rank == 0


def current() -> Ranks | None:
    """This process's place in the initialised process group; None when a run is on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def from_env(env: Mapping[str, str] = os.environ) -> Ranks | None:
    """The ranks ``torchrun`` or SLURM (``srun`` with ``--ntasks-per-node``) gave this process, or None."""
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    else:
        return None
    if not 0 <= rank < world:
        raise KdsweepError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return Ranks(rank, world, local)


def backend_for(device: str) -> str:
    """NCCL for CUDA, gloo for the CPU."""
    return "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"


def rank_device(device: str, ranks: Ranks) -> str:
    """The device one process trains on: its own GPU (``cuda:LOCAL_RANK``) when the run is on CUDA."""
    if backend_for(device) == "nccl":
        return f"cuda:{ranks.local_rank}"
    return device


def join(ranks: Ranks, device: str, init_method: str = "env://") -> None:
    """Join the process group of a run (rank 0 waits for the others at ``init_method``)."""
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group(backend, init_method=init_method, rank=ranks.rank, world_size=ranks.world,
                            timeout=TIMEOUT)


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sum_over_ranks(*tensors: torch.Tensor) -> None:
    """In place: each tensor becomes its sum over the processes."""
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_flag(value: bool, device: torch.device) -> bool:
    """Rank 0's ``value`` on every process."""
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's BatchNorm running statistics (and other buffers) to every process."""
    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def _helper(rank: int, world: int, address: str, device: str, kwargs: dict) -> None:
    """A spawned rank 1..N-1: train the same run without callbacks; rank 0 does the rest."""
    from kdsweep.core.trainer import train

    join(Ranks(rank, world, rank), device, address)
    train(kwargs.pop("cfg"), kwargs.pop("data"), **kwargs)
    dist.barrier()  # rank 0 is done with its last collective too
    # gloo's teardown races the peers' sockets closing ("terminate called without an active
    # exception"); the run is over and nothing is left to flush, so leave without it
    os._exit(0)


def train_on(processes: int, cfg, data, *, teacher=None, on_epoch: Callable | None = None,
             checkpoint_path: Path | None = None, **kwargs):
    """``core.trainer.train`` on ``processes`` local processes: this one is rank 0, the others are spawned.

    Returns rank 0's ``TrainResult``. ``processes == 1`` is plain ``train``. The spawned processes
    get the config, data and teacher pickled; they write nothing and call nothing back.
    """
    import torch.multiprocessing as mp

    from kdsweep.core.trainer import train

    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes!r}")
    if processes == 1:
        return train(cfg, data, teacher=teacher, on_epoch=on_epoch, checkpoint_path=checkpoint_path, **kwargs)
    if kwargs.get("co_teacher") is not None:
        raise KdsweepError("processes > 1 cannot train an online teacher beside the student (teacher.mode: online)")
    if cfg.batch_size % processes:
        raise KdsweepError(f"batch_size={cfg.batch_size} does not split into processes={processes} equal shards")
    if dist.is_initialized():
        raise KdsweepError("this process is already in a process group; one multi-process run at a time")
    address = f"tcp://127.0.0.1:{free_port()}"
    ctx = mp.get_context("spawn")
    helpers = []
    for rank in range(1, processes):
        shared = dict(cfg=cfg, data=data, teacher=teacher, checkpoint_path=checkpoint_path, **kwargs)
        p = ctx.Process(target=_helper, args=(rank, processes, address, cfg.device, shared), daemon=True)
        p.start()
        helpers.append(p)
    try:
        join(Ranks(0, processes, 0), cfg.device, address)
        try:
            result = train(cfg, data, teacher=teacher, on_epoch=on_epoch, checkpoint_path=checkpoint_path, **kwargs)
            dist.barrier()
        finally:
            leave()
    except BaseException:
        for p in helpers:
            p.kill()
        raise
    finally:
        for p in helpers:
            p.join(timeout=60)
    bad = [p.exitcode for p in helpers if p.exitcode != 0]
    if bad:
        raise KdsweepError(f"a training process of {processes} exited with code {bad[0]}")
    return result
