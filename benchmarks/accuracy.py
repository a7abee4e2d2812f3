"""Does the fast path lose accuracy? Distil the same teacher into the same student both ways, 3 seeds.

    python benchmarks/accuracy.py --data-root ../shared/datasets/cifar10-subset --device cuda

plain: fp32, eager steps, NCHW, the online teacher (unfolded) on every batch.
fast:  what a study uses: on CUDA bf16 autocast, channels_last, compiled + graph-captured steps, the
       teacher's view table (BatchNorm folded) looked up instead of a teacher forward; on the CPU
       (--device cpu --fast-accel auto) fp32 steps and the table, in bf16 where the CPU has it.
fast_online: the fast path with the online teacher (BatchNorm folded) instead of the table: on
       a CPU with native bf16, an fp32 student and a bf16 teacher forward.
The teacher is trained once (fast path) and shared. Also trains the no-KD baseline (fast path)
so the KD gain can be read against it. Prints each run, then mean/std per arm and whether the
fast arm's mean lies within one standard deviation of the plain arm's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsweep.core.config import TrainConfig, kd_fields  # noqa: E402
from kdsweep.core.data import load_dataset  # noqa: E402
from kdsweep.core.precision import teacher_bf16  # noqa: E402
from kdsweep.core.teachers import OnlineTeacher, TableTeacher, table_for  # noqa: E402
from kdsweep.core.trainer import train  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--teacher-epochs", type=int, default=60)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--teacher", default="resnet18")
    p.add_argument("--teacher-width", type=float, default=1.0)
    p.add_argument("--limit-per-file", type=int, help="first N images of each file (quick checks)")
    p.add_argument("--fast-accel", default="compile")
    p.add_argument("--arms", default="baseline,fast,plain")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    data = load_dataset("cifar10", args.data_root, limit_per_file=args.limit_per_file)
    recipe = dict(batch_size=256, lr=0.1, schedule="cosine", device=args.device)
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))

    t0 = time.perf_counter()
    teacher_run = train(TrainConfig(arch=args.teacher, width=args.teacher_width, epochs=args.teacher_epochs, seed=0,
                                    **recipe), data)
    record({"arm": "teacher", "arch": args.teacher, "test_acc": teacher_run.final.test_score,
            "seconds": time.perf_counter() - t0})
    teacher_net = teacher_run.scored_model.eval()

    folded = OnlineTeacher(teacher_net, fold_bn=True)
    table = None
    if "fast" in args.arms.split(","):  # 162 teacher forwards per image: minutes on a CPU, so only when asked
        t0 = time.perf_counter()
        # in the precision the trainer gives the teacher under precision auto (bf16 on CUDA and on
        # a CPU with native bf16), so the fast arm's trials read it
        bf16 = teacher_bf16("auto", torch.device(args.device))
        table = TableTeacher(table_for(folded, data, device=args.device, bf16=bf16), folded)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        record({"arm": "table", "seconds": time.perf_counter() - t0, "shape": list(table.table.logits.shape)})
    plain_teacher = OnlineTeacher(teacher_net)

    student = dict(arch="resnet20", width=args.width, epochs=args.epochs, **recipe)
    kd = kd_fields(args.alpha, args.temperature)
    arms = {
        "baseline": lambda s: train(TrainConfig(seed=s, **student), data, accel=args.fast_accel),
        "fast": lambda s: train(TrainConfig(seed=s, **kd, **student), data, teacher=table, accel=args.fast_accel),
        "fast_online": lambda s: train(TrainConfig(seed=s, **kd, **student), data, teacher=folded,
                                       accel=args.fast_accel),
        "teacher_plain": lambda s: train(TrainConfig(arch=args.teacher, width=args.teacher_width,
                                                     epochs=args.teacher_epochs, seed=s,
                                                     precision="fp32", channels_last=False, **recipe), data,
                                         accel="eager"),
        "plain": lambda s: train(TrainConfig(seed=s, precision="fp32", channels_last=False, **kd, **student), data,
                                 teacher=plain_teacher, accel="eager"),
    }
    for arm in args.arms.split(","):
        for s in seeds:
            t0 = time.perf_counter()
            result = arms[arm](s)
            record({"arm": arm, "seed": s, "test_acc": result.final.test_score, "seconds": time.perf_counter() - t0,
                    "cuda_graph": result.extras.get("cuda_graph")})

    print("\n| arm | test acc per seed | mean | std | seconds per run |")
    print("| --- | --- | --- | --- | --- |")
    stats = {}
    for arm in args.arms.split(","):
        accs = [r["test_acc"] for r in rows if r["arm"] == arm]
        secs = [r["seconds"] for r in rows if r["arm"] == arm]
        mean, std = statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        stats[arm] = (mean, std)
        print(f"| {arm} | {', '.join(f'{a:.4f}' for a in accs)} | {mean:.4f} | {std:.4f} | {statistics.fmean(secs):.1f} |")
    for fast in ("fast", "fast_online"):
        if fast in stats and "plain" in stats:
            gap = stats[fast][0] - stats["plain"][0]
            print(f"{fast} - plain = {gap:+.4f}; plain std {stats['plain'][1]:.4f}; "
                  f"within one std: {abs(gap) <= stats['plain'][1]}")


if __name__ == "__main__":
    main()
