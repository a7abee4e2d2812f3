"""One run on 1 and on N data-parallel processes (kdsweep/core/distributed.py), same global batch.

    python benchmarks/processes.py                          # CPU, gloo, the CIFAR-10 subset
    python benchmarks/processes.py --device cuda --processes 1 2 4 --limit 1000 --arch resnet20

Prints per process count the wall time of the whole call (process start, rendezvous and
evaluation included), the trainer's training images/s (median over epochs after the first, summed
over the processes) and the final test accuracy; on the CPU each process gets
``cores / processes`` threads (torch.set_num_threads in the spawned processes follows
OMP_NUM_THREADS, set here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SUBSET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-subset"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=SUBSET)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--arch", default="resnet8")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cores = os.cpu_count() or 1

    import torch

    from kdsweep.core.config import TrainConfig
    from kdsweep.core.data import load_dataset
    from kdsweep.core.distributed import train_on

    data = load_dataset("cifar10", args.data_root, limit_per_file=args.limit)
    print(f"data: {len(data.train_y)} train / {len(data.test_y)} test; {cores} cores; {args.arch} x{args.width}, "
          f"global batch {args.batch_size}, {args.epochs} epochs, {args.device}")
    cfg = TrainConfig(arch=args.arch, width=args.width, epochs=args.epochs, batch_size=args.batch_size, lr=0.05,
                      seed=0, device=args.device)
    for n in args.processes:
        threads = max(1, cores // n)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the spawned processes read it at start
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        r = train_on(n, cfg, data)
        wall = time.perf_counter() - t0
        ips = statistics.median(m.images_per_second for m in r.history[1:]) if len(r.history) > 1 \
            else r.final.images_per_second
        print(f"processes {n} ({threads} threads each): wall {wall:.1f} s, {ips:.0f} training images/s, "
              f"final train loss {r.final.train_loss:.4f}, test acc {r.final.test_acc:.4f}")


if __name__ == "__main__":
    main()
