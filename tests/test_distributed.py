"""core/distributed.py: one run on several processes (DDP over gloo on the CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from kdsweep.core.config import TrainConfig
from kdsweep.core.distributed import Ranks, from_env, train_on
from kdsweep.core.loader import DeviceLoader
from kdsweep.errors import KdsweepError

# cnn_student has no BatchNorm: with per-process BN statistics (DDP's default) a BN model would see
# B/N images per statistic and differ by design; without BN the only difference between 1 process with
# batch B and 2 with B/2 each is the order of the gradient sums (float rounding).
TINY = dict(arch="cnn_student", width=0.5, epochs=2, batch_size=32, lr=0.05, seed=0)


def test_shards_of_every_process_make_up_the_global_batch():
    x = torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(40) % 4
    common = dict(batch_size=8, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3, train=True, seed=3)
    whole = list(DeviceLoader(x, y, **common).epoch(1))
    shards = [list(DeviceLoader(x, y, shard=(r, 2), **common).epoch(1)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(whole) == 5
    for b, s0, s1 in zip(whole, *shards):
        assert torch.equal(torch.cat([s0.index, s1.index]), b.index)
        assert torch.equal(torch.cat([s0.x, s1.x]), b.x)  # the same crop and flip per image too


def test_a_batch_that_does_not_split_into_the_processes_is_refused():
    x, y = torch.zeros(16, 3, 8, 8, dtype=torch.uint8), torch.zeros(16, dtype=torch.int64)
    with pytest.raises(ValueError, match="batch_size=6"):
        DeviceLoader(x, y, batch_size=6, device="cpu", mean=(0.5,) * 3, std=(0.25,) * 3, train=True, shard=(0, 4))
    with pytest.raises(KdsweepError, match="batch_size=30 does not split into processes=4"):
        train_on(4, TrainConfig(**{**TINY, "batch_size": 30}), None)


def test_ranks_come_from_torchrun_or_slurm_variables():
    assert from_env({}) is None
    assert from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Ranks(1, 4, 1)
    assert from_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}) == Ranks(3, 4, 1)
    with pytest.raises(KdsweepError, match="RANK=5"):
        from_env({"RANK": "5", "WORLD_SIZE": "2"})


def test_two_processes_train_as_one_with_the_same_global_batch_and_log_each_epoch_once(tiny_imageset):
    cfg = TrainConfig(**TINY)
    one = train_on(1, cfg, tiny_imageset)
    logged = []
    two = train_on(2, cfg, tiny_imageset, on_epoch=logged.append)
    assert [m.epoch for m in logged] == [1, 2]  # rank 0 only, once per epoch
    assert two.history[-1].train_loss == pytest.approx(one.history[-1].train_loss, abs=1e-3)
    # tolerance: one test image of 60 (rounding in the gradient sums may flip a borderline prediction)
    assert abs(two.final.test_acc - one.final.test_acc) <= 1 / len(tiny_imageset.test_y) + 1e-9
    # the epoch's numbers are summed over both processes: every training image counted once
    assert two.final.images_per_second > 0 and len(two.history) == 2


SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from kdsweep.core.config import TrainConfig
    from kdsweep.core.data import load_dataset
    from kdsweep.core.distributed import train_on

    if __name__ == "__main__":
        out, pause = Path(sys.argv[1]), float(sys.argv[2])
        data = load_dataset("cifar10", sys.argv[3], limit_per_file=30)
        cfg = TrainConfig(arch="cnn_student", width=0.5, epochs=3, batch_size=16, lr=0.05, seed=0)

        def on_epoch(m):
            with open(out / "epochs.log", "a") as f:
                f.write(f"{m.epoch}\\n")
            (out / f"epoch{m.epoch}").touch()
            time.sleep(pause)  # the test kills a process here, after the epoch's checkpoint

        r = train_on(2, cfg, data, on_epoch=on_epoch, checkpoint_path=out / "run.pt")
        print(json.dumps({"resumed": r.resumed_from_epoch, "epochs": [m.epoch for m in r.history]}))
""")


def _helper_pids(pid: int) -> list[int]:
    kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]


def _alive(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _kill_after(cmd: list[str], env: dict, marker: Path, victim: str) -> None:
    """Start the 2-process run, and when ``marker`` appears SIGKILL rank ``victim``; the other must exit too."""
    run = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert run.poll() is None and time.monotonic() < deadline, f"the run never wrote {marker.name}"
            time.sleep(0.05)
        helpers = _helper_pids(run.pid)
        assert len(helpers) == 1
        os.kill(run.pid if victim == "rank0" else helpers[0], signal.SIGKILL)
        assert run.wait(60) != 0
        # the survivor notices its peer is gone at its next collective and exits
        deadline = time.monotonic() + 60
        while _alive(helpers[0]):
            assert time.monotonic() < deadline, "the spawned process outlived its killed rank 0"
            time.sleep(0.1)
    finally:
        run.kill()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the spawned process in /proc (Linux)")
def test_a_run_resumes_after_a_kill_of_either_process(tmp_path, subset_root):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), str(tmp_path)]
    _kill_after(cmd + ["3", str(subset_root)], env, tmp_path / "epoch1", "rank1")  # the spawned process
    _kill_after(cmd + ["3", str(subset_root)], env, tmp_path / "epoch2", "rank0")  # the one that logs
    rerun = subprocess.run(cmd + ["0", str(subset_root)], env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    out = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert out == {"resumed": 2, "epochs": [1, 2, 3]}
    # epoch 1 logged by the first run, 2 by the second (resumed after 1), 3 by the third: each once
    assert (tmp_path / "epochs.log").read_text().split() == ["1", "2", "3"]


class Pruned(Exception):
    pass


def test_a_run_stopped_by_rank_0_on_epoch_stops_every_process(tiny_imageset):
    # Optuna's pruner raises from on_epoch on rank 0; the other process must not wait for epoch 2
    import multiprocessing

    def prune(m):
        raise Pruned(f"pruned at epoch {m.epoch}")

    start = time.monotonic()
    with pytest.raises(Pruned, match="epoch 1"):
        train_on(2, TrainConfig(**{**TINY, "epochs": 5}), tiny_imageset, on_epoch=prune)
    assert time.monotonic() - start < 120
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]  # no process left behind
