"""Stored soft labels (FKD, kdsweep/core/soft_labels.py) against the online teacher: speed, size, accuracy.

    python benchmarks/stored_labels.py                       # the CIFAR-10 subset of this repo
    python benchmarks/stored_labels.py --data-root PATH --limit 1000 --teacher resnet32 --crops 10 --top-k 10

Prints, for one teacher trained here on the data (``--teacher-epochs``):
  write      seconds to write the store (every training image x ``--crops``) and its bytes per image
  accuracy   test accuracy of ``--epochs`` epochs of KD with stored labels and online, same seeds
             (``--seeds``), mean and per seed, with each run's images/s
  step       the student's training images/s with stored labels and with the online teacher: ``--reps``
             one-epoch runs of each, interleaved (stored, online, stored, ...) so that a machine whose
             load drifts slows both alike; the trainer's own images_per_second, median per side

The online run uses the view-free online teacher (its forward every step, BatchNorm folded), the
stored run replays the stored random-resized crops; both use kd with the same alpha and T.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsweep.core.config import TrainConfig  # noqa: E402
from kdsweep.core.data import load_dataset  # noqa: E402
from kdsweep.core.soft_labels import CropRecipe, LabelStore, StoredLabels, write_store  # noqa: E402
from kdsweep.core.teachers import OnlineTeacher  # noqa: E402
from kdsweep.core.models import build_model  # noqa: E402
from kdsweep.core.trainer import evaluate_split, train  # noqa: E402

SUBSET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-subset"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=SUBSET)
    ap.add_argument("--limit", type=int, default=200, help="images per CIFAR file (limit_per_file)")
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--student-width", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--crops", type=int, default=10)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--scale", type=float, nargs=2, default=(0.35, 1.0))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--reps", type=int, default=5, help="interleaved one-epoch runs per side for the step speed")
    ap.add_argument("--teacher-cache", type=Path, help="load the teacher's weights from here if present, else "
                                                        "train it and save them here")
    args = ap.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    data = load_dataset("cifar10", args.data_root, limit_per_file=args.limit)
    print(f"data: {len(data.train_y)} train / {len(data.test_y)} test images {tuple(data.train_x.shape[1:])}, "
          f"{torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    tcfg = TrainConfig(arch=args.teacher, epochs=args.teacher_epochs, batch_size=args.batch_size, lr=0.05, seed=0)
    if args.teacher_cache is not None and args.teacher_cache.exists():
        net = build_model(args.teacher, num_classes=data.num_classes)
        net.load_state_dict(torch.load(args.teacher_cache, weights_only=True))
        acc = evaluate_split(net, data)[1]
    else:
        trained = train(tcfg, data)
        net, acc = trained.model, trained.final.test_acc
        if args.teacher_cache is not None:
            torch.save(net.state_dict(), args.teacher_cache)
    print(f"teacher {args.teacher}: test acc {acc:.4f} ({time.perf_counter() - t0:.0f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        recipe = CropRecipe(crops=args.crops, top_k=args.top_k, scale=tuple(args.scale))
        t0 = time.perf_counter()
        store = write_store(net, data.train_x, data.mean, data.std, recipe, Path(tmp),
                            num_classes=data.num_classes, data_identity=data.identity)
        secs = time.perf_counter() - t0
        full = args.crops * data.num_classes * 4  # fp32 logits of every class per crop, for comparison
        print(f"write: {secs:.1f} s for {len(data.train_y)} images x {args.crops} crops "
              f"({len(data.train_y) * args.crops / secs:.0f} teacher crops/s); {store.bytes_per_image:.0f} bytes "
              f"per image (top {args.top_k} fp16 + int16 classes, int16 box, flip), full fp32 logits: {full}")
        stored = StoredLabels(LabelStore(Path(tmp)), data.identity)
        online = OnlineTeacher(net, fold_bn=True)
        rows: dict[str, list] = {"stored": [], "online": []}
        for seed in args.seeds:
            cfg = TrainConfig(arch=args.student, width=args.student_width, epochs=args.epochs,
                              batch_size=args.batch_size, lr=0.05, seed=seed, method="kd")
            for name, source in (("stored", stored), ("online", online)):
                r = train(cfg, data, teacher=source)
                ips = statistics.median(m.images_per_second for m in r.history[1:]) if len(r.history) > 1 \
                    else r.final.images_per_second
                rows[name].append((r.final.test_acc, ips))
                print(f"  seed {seed} {name:6s}: test acc {r.final.test_acc:.4f}, {ips:.0f} student images/s")
        for name, xs in rows.items():
            print(f"accuracy {name}: {statistics.fmean(a for a, _ in xs):.4f} mean over seeds {args.seeds}")
        speeds: dict[str, list[float]] = {"stored": [], "online": []}
        for rep in range(args.reps):
            cfg = TrainConfig(arch=args.student, width=args.student_width, epochs=1, batch_size=args.batch_size,
                              lr=0.05, seed=rep, method="kd")
            for name, source in (("stored", stored), ("online", online)):
                speeds[name].append(train(cfg, data, teacher=source).final.images_per_second)
    for name, xs in speeds.items():
        print(f"step {name}: {statistics.median(xs):.0f} student images/s (median of {args.reps} interleaved "
              f"epochs: {', '.join(f'{x:.0f}' for x in xs)})")
    print(f"speedup_stored_vs_online: {statistics.median(speeds['stored']) / statistics.median(speeds['online']):.2f}x")


if __name__ == "__main__":
    main()
