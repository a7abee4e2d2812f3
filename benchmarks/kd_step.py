"""KD step speed: a seed-style loop against kdsweep's trainer, same teacher/student pair and data.

    python benchmarks/kd_step.py --device cpu            # this machine: small sizes
    python benchmarks/kd_step.py --device cuda           # a GPU: CIFAR sizes
    python benchmarks/kd_step.py --device cuda --sections trial,study --jobs 1,2,4 --packing processes

Sections (``--sections``, comma separated; default ``seed,online,table,packed``):
  seed    the seed projects' loop: a torchvision-style Dataset of PIL images, RandomCrop(32, 4) +
          RandomHorizontalFlip + ToTensor + Normalize in DataLoader workers, fp32, NCHW, SGD,
          ``loss.item()`` per step for the running loss.
  online  kdsweep's ``train()`` with an online teacher, for each ``--accel`` mode.
  table   kdsweep's ``train()`` with a teacher view table (a student-only step).
  packed  ``train_group`` of ``--pack`` K students of one seed (what ``jobs: K`` does in a study),
          online teacher, one teacher forward per batch for all K; student images/s of the group.
  build   seconds to compute a real view table (every view of ``--table-images`` images).
  features  kdsweep's ``train()`` with each feature method of ``--methods`` (online teacher, eager:
          taps, the teacher's forward and the connector in every step) beside kd with the online
          teacher; prints each method's img/s as a fraction of that kd step (``feature_vs_kd``).
  steps   one training step at a time, interleaved round-robin over ce (student alone), kd (online
          teacher), each method of ``--methods`` and the teacher's forward alone, ``--rounds`` times on
          the same batches: median ms per step. Interleaving keeps a busy, shared machine's load
          changes out of the comparison (whole-epoch timings taken one after another do not).
  trial   one whole ``--trial-epochs`` trial on ``--images`` CIFAR-shaped images, table teacher:
          wall time of the first (cold) and of a second (warm) trial in this process.
  study   ``--study-trials`` trials with varied temperature/alpha/lr, for each ``--jobs`` K as K
          threads of this process (one CUDA stream each) and/or K fresh processes (``--packing``);
          trials per hour. Process rows include each process's cold start (data, table, capture).

Images are generated (kdsweep.core.data.synthetic_imageset) unless ``--data-root`` points at a
CIFAR-10 folder; speed does not depend on the pixel values, and teachers are untrained for the
same reason. The table sections use a table of random logits of the real shape and dtype (a
lookup costs the same whatever it holds); ``build`` times computing a real one.
kdsweep's images/s is the trainer's own ``images_per_second`` (training only, evaluation
excluded), median over the epochs after the first (the first holds warm-up, capture, compile).
The last line is ``speedup: N.NNx``: the best online-teacher kdsweep mode, one student, over the
seed loop; ``speedup_packed`` before it is the best packed group's student images/s over the seed
loop (both loops train one student image per teacher forward; a packed group trains K).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsweep.core.config import TrainConfig, kd_fields  # noqa: E402
from kdsweep.core.data import load_dataset, num_views, synthetic_imageset  # noqa: E402
from kdsweep.core.losses import kd_loss  # noqa: E402
from kdsweep.core.models import build_model  # noqa: E402
from kdsweep.core.teachers import OnlineTeacher, TableTeacher, TeacherTable, compute_table  # noqa: E402
from kdsweep.core.packing import train_group  # noqa: E402
from kdsweep.core.precision import teacher_bf16  # noqa: E402
from kdsweep.core.trainer import DeviceLoader, RunRequest, train  # noqa: E402

DEFAULTS = {  # device -> sizes; the CPU here is small, so fewer images and a narrower pair
    "cpu": dict(images=768, test_images=128, batch_size=128, epochs=3, seed_steps=6, workers=4,
                teacher_width=0.5, student_width=0.5, accel="eager", table_images=16),
    "cuda": dict(images=50000, test_images=10000, batch_size=512, epochs=4, seed_steps=60, workers=4,
                 teacher_width=1.0, student_width=1.0, accel="eager,graph,compile", table_images=2048),
}


def log(msg: str) -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(args):
    if args.data_root:
        return load_dataset("cifar10", args.data_root)
    return synthetic_imageset(n_train=args.images, n_test=args.test_images, num_classes=10, size=32, seed=0)


# ---------------------------------------------------------------------------------------------
# Seed style
# ---------------------------------------------------------------------------------------------


class SeedDataset(torch.utils.data.Dataset):
    """Like torchvision.datasets.CIFAR10: HWC uint8 arrays, a PIL image per item, transform on it."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
        self.data = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def bench_seed(args, data, teacher: torch.nn.Module, device: torch.device) -> dict:
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(data.mean, data.std)])
    loader = torch.utils.data.DataLoader(
        SeedDataset(data.train_x, data.train_y, transform), batch_size=128, shuffle=True,
        num_workers=args.workers, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=args.workers > 0)
    torch.manual_seed(0)
    student = build_model(args.student, num_classes=10, width=args.student_width).to(device).train()
    teacher = copy.deepcopy(teacher).to(device).eval()
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    warm, steps = 2 if device.type == "cuda" else 1, args.seed_steps
    done, seen, running, t0 = 0, 0, 0.0, None
    while done < warm + steps:
        for x, y in loader:
            if done == warm:
                sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                t = teacher(x)
            loss = kd_loss(student(x), y, t, alpha=0.9, temperature=4.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.item()
            done += 1
            seen += len(y) if done > warm else 0
            if done == warm + steps:
                break
    sync(device)
    ips = seen / (time.perf_counter() - t0)
    return {"variant": f"seed style: DataLoader {args.workers} workers, CPU transforms, fp32, bs 128",
            "img_per_s": ips}


# ---------------------------------------------------------------------------------------------
# kdsweep's trainer
# ---------------------------------------------------------------------------------------------


def student_cfg(args, device: torch.device, **kw) -> TrainConfig:
    base = dict(arch=args.student, width=args.student_width, epochs=args.epochs, batch_size=args.batch_size,
                lr=0.1 * args.batch_size / 128, device=str(device))
    kd = kd_fields(kw.pop("alpha", 0.9), kw.pop("temperature", 4.0))
    return TrainConfig(**{**base, **kd, **kw})


def bench_trainer(args, data, source, device: torch.device, accel: str, label: str) -> dict:
    cfg = student_cfg(args, device)
    history = []
    t0 = time.perf_counter()
    train(cfg, data, teacher=source, accel=accel, on_epoch=history.append)
    wall = time.perf_counter() - t0
    later = [m.images_per_second for m in history[1:]] or [history[0].images_per_second]
    return {"variant": f"kdsweep {label}, accel={accel}, bs {cfg.batch_size}", "img_per_s": statistics.median(later),
            "first_epoch_s": history[0].epoch_seconds, "wall_s": wall}


def bench_packed(args, data, source, device: torch.device, k: int, label: str) -> dict:
    """K students of one seed in one loop (core/packing.py): one teacher forward per batch for all K."""
    cfgs = [student_cfg(args, device, temperature=2.0 + i, alpha=0.9 - 0.1 * (i % 3), lr=(0.05 + 0.02 * i)
                        * args.batch_size / 128) for i in range(k)]
    t0 = time.perf_counter()
    results = train_group([RunRequest(c, source, accel="eager") for c in cfgs], data)  # packed steps are eager
    wall = time.perf_counter() - t0
    failed = [repr(r) for r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"packed runs failed: {failed[:2]}")
    # each run's images_per_second counts its own images over the shared epoch time
    per_epoch = [sum(r.history[e].images_per_second for r in results) for e in range(args.epochs)]
    later = per_epoch[1:] or per_epoch
    return {"variant": f"kdsweep {label}, {k} students packed (one teacher call per batch), eager, "
                       f"bs {cfgs[0].batch_size}; student images/s", "img_per_s": statistics.median(later),
            "students": k, "wall_s": wall}


FEATURE_PARAMS = {"crd": {"negatives": 4096}}  # CIFAR-100's 16,384 are more images than a CPU run has


def bench_features(args, data, source, device: torch.device) -> list[dict]:
    """kd with the online teacher, then each feature method: same pair, data, batch size and epochs."""
    rows = [dict(bench_trainer(args, data, source, device, "eager", "online teacher"), method="kd")]
    for method in args.methods.split(","):
        cfg = student_cfg(args, device, method=method, method_params=FEATURE_PARAMS.get(method, {}))
        history = []
        t0 = time.perf_counter()
        result = train(cfg, data, teacher=source, accel="eager", on_epoch=history.append)
        later = [m.images_per_second for m in history[1:]] or [history[0].images_per_second]
        rows.append({"variant": f"kdsweep {method} (online teacher with taps, connector "
                                f"{int(result.extras.get('connector_params', 0)):,} params), eager, bs {cfg.batch_size}",
                     "img_per_s": statistics.median(later), "method": method, "wall_s": time.perf_counter() - t0})
    return rows


def bench_steps(args, data, online: OnlineTeacher, device: torch.device) -> list[dict]:
    """Median ms per step of each method, steps interleaved round-robin on the same batches."""
    from kdsweep.core.trainer import Run

    methods = ["ce", "kd", *args.methods.split(",")]
    runs = {}
    for m in methods:
        cfg = student_cfg(args, device, method=m, method_params=FEATURE_PARAMS.get(m, {}))
        runs[m] = Run(RunRequest(cfg, None if m == "ce" else online, accel="eager"), data)
        runs[m].runner.begin_epoch(0)
    batches = [b for _, b in zip(range(4), runs["kd"].runner.loader.epoch(0))]
    for m in methods:  # warm-up: allocations, the connector's first step
        runs[m].runner.step(batches[0], None)
    times: dict[str, list[float]] = {m: [] for m in [*methods, "teacher forward"]}
    for r in range(args.rounds):
        b = batches[r % len(batches)]
        for m in [*methods, "teacher forward"]:
            t0 = time.perf_counter()
            if m == "teacher forward":
                online(b)
            else:
                runs[m].runner.step(b, None)
            sync(device)
            times[m].append(time.perf_counter() - t0)
    ms = {m: 1000 * statistics.median(ts) for m, ts in times.items()}
    return [{"variant": f"step {m} ({'student alone' if m == 'ce' else 'online teacher' if m == 'kd' else m if m == 'teacher forward' else 'taps + connector'}), bs {args.batch_size}, median of {args.rounds}",
             "ms_per_step": ms[m], "vs_kd": ms[m] / ms["kd"], "method": m,
             "connector_params": int(runs[m].features.connector_params) if m in runs and runs[m].features else 0}
            for m in times]


def random_table(data, online: OnlineTeacher, device: torch.device) -> TableTeacher:
    dtype = torch.bfloat16 if teacher_bf16("auto", device) else torch.float32  # what compute_table would hold
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(data.train_y), num_views(4), data.num_classes, generator=g).to(device, dtype)
    return TableTeacher(TeacherTable(logits, 4, "random", data.identity), online)


def bench_build(args, data, online: OnlineTeacher, device: torch.device) -> dict:
    n = min(args.table_images, len(data.train_y))
    loader = DeviceLoader(data.train_x[:n], data.train_y[:n], batch_size=n, device=device, mean=data.mean,
                          std=data.std, train=False, channels_last=True)
    online.to(device, channels_last=True, bf16=teacher_bf16("auto", device))
    run = lambda: compute_table(online.model, loader, data_identity="bench", key="bench",  # noqa: E731
                                autocast=online.autocast, batch_size=args.table_batch)
    run() if device.type == "cuda" else None  # warm-up (cuDNN plans)
    sync(device)
    t0 = time.perf_counter()
    run()
    sync(device)
    seconds = time.perf_counter() - t0
    forwards = n * num_views(4)
    return {"variant": f"view table: {n} images x {num_views(4)} views", "teacher_forwards_per_s": forwards / seconds,
            "seconds": seconds, "seconds_for_50k": 50000 * num_views(4) / (forwards / seconds)}


def bench_trial(args, data, source, device: torch.device) -> list[dict]:
    cfg = student_cfg(args, device, epochs=args.trial_epochs)
    rows = []
    for which in ("cold (first trial in the process)", "warm (second trial, same process)"):
        sync(device)
        t0 = time.perf_counter()
        result = train(cfg, data, teacher=source, accel=args.trial_accel)
        sync(device)
        rows.append({"variant": f"trial {which}: {args.student} x{args.student_width}, {cfg.epochs} epochs, "
                                f"{len(data.train_y)} images, bs {cfg.batch_size}, accel={args.trial_accel}",
                     "seconds": time.perf_counter() - t0, "final_train_loss": result.final.train_loss})
    return rows


def _one_trial(args, data, source, device: torch.device, i: int, epochs: int | None = None) -> float:
    # a study's trials differ in temperature, alpha and lr; shapes (and so graphs) stay the same
    g = torch.Generator().manual_seed(i)
    u = torch.rand(3, generator=g).tolist()
    cfg = student_cfg(args, device, epochs=epochs or args.trial_epochs, temperature=1 + 7 * u[0], alpha=0.5 + 0.45 * u[1],
                      lr=(0.05 + 0.3 * u[2]) * args.batch_size / 128, seed=i)
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    with torch.cuda.stream(stream) if stream is not None else _null():
        result = train(cfg, data, teacher=source, accel=args.trial_accel)
    return result.final.test_score


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def bench_study(args, data, source, device: torch.device) -> list[dict]:
    rows = []
    n = args.study_trials
    _one_trial(args, data, source, device, 10_000, epochs=1)  # warm the process (cuDNN plans, compile)
    for k in args.jobs if "threads" in args.packing else []:
        sync(device)
        t0 = time.perf_counter()
        with futures.ThreadPoolExecutor(max_workers=k) as pool:
            list(pool.map(lambda i: _one_trial(args, data, source, device, i), range(n)))
        sync(device)
        wall = time.perf_counter() - t0
        rows.append({"variant": f"study: {n} trials x {args.trial_epochs} epochs, {args.student} "
                                f"x{args.student_width}, {k} thread(s), accel={args.trial_accel}", "seconds": wall,
                     "trials_per_hour": n * 3600 / wall})
        log("partial: " + json.dumps(rows[-1]))
    if "processes" in args.packing:
        for k in args.jobs:
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--device", str(device), "--sections", "worker", "--worker-trials",
                   str(n // k), "--student", args.student, "--student-width", str(args.student_width),
                   "--teacher", args.teacher, "--teacher-width", str(args.teacher_width), "--trial-epochs", str(args.trial_epochs),
                   "--images", str(args.images), "--batch-size", str(args.batch_size), "--test-images",
                   str(args.test_images), "--trial-accel", args.trial_accel]
            procs = [subprocess.Popen(cmd) for _ in range(k)]
            codes = [p.wait() for p in procs]
            wall = time.perf_counter() - t0
            rows.append({"variant": f"study: {n // k * k} trials x {args.trial_epochs} epochs, {args.student} "
                                    f"x{args.student_width}, {k} process(es) (cold starts included), "
                                    f"accel={args.trial_accel}",
                         "seconds": wall, "trials_per_hour": n // k * k * 3600 / wall, "exit_codes": codes})
            log("partial: " + json.dumps(rows[-1]))
    return rows


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sections", default="seed,online,table,packed")
    p.add_argument("--teacher", default="resnet18")
    p.add_argument("--student", default="resnet20")
    p.add_argument("--teacher-width", type=float)
    p.add_argument("--student-width", type=float)
    p.add_argument("--images", type=int)
    p.add_argument("--test-images", type=int)
    p.add_argument("--batch-size", type=int, help="kdsweep's batch size (the seed loop always uses 128)")
    p.add_argument("--epochs", type=int, help="epochs per kdsweep measurement (the first is not timed)")
    p.add_argument("--seed-steps", type=int, help="timed steps of the seed loop")
    p.add_argument("--workers", type=int, help="DataLoader workers of the seed loop")
    p.add_argument("--accel", help="kdsweep modes to time, comma separated: eager, graph, compile")
    p.add_argument("--table-images", type=int)
    p.add_argument("--table-batch", type=int, default=1024)
    p.add_argument("--trial-epochs", type=int, default=30)
    p.add_argument("--trial-accel", default="auto")
    p.add_argument("--study-trials", type=int, default=16)
    p.add_argument("--jobs", default="1", help="study section: concurrent trials to try, comma separated")
    p.add_argument("--packing", default="threads",
                   help="study section: run K trials at once as threads, processes, or threads,processes")
    p.add_argument("--pack", default="2,4", help="packed section: students per loop to try, comma separated")
    p.add_argument("--methods", default="fitnet,at,rkd,crd,reviewkd", help="features/steps sections: methods to time")
    p.add_argument("--rounds", type=int, default=8, help="steps section: interleaved rounds")
    p.add_argument("--worker-trials", type=int, default=0)
    p.add_argument("--data-root", type=Path)
    p.add_argument("--out", type=Path, help="also write every row as JSON here")
    args = p.parse_args(argv)
    for k, v in DEFAULTS[args.device].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.jobs = [int(j) for j in str(args.jobs).split(",")]
    args.pack = [int(k) for k in str(args.pack).split(",")]
    sections = args.sections.split(",")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if device.type == "cpu":
        # both loops: late in training, tiny gradients turn into denormal floats that the CPU
        # handles ~2x slower; the seed loop times its first few steps only, kdsweep later epochs
        torch.set_flush_denormal(True)

    data = make_data(args)
    torch.manual_seed(0)
    teacher_net = build_model(args.teacher, num_classes=data.num_classes, width=args.teacher_width)
    online = OnlineTeacher(teacher_net, fold_bn=True)
    table = random_table(data, online, device) if {"table", "trial", "study", "worker"} & set(sections) else None

    if sections == ["worker"]:  # one process of the study section's --processes runs
        for i in range(args.worker_trials):
            _one_trial(args, data, table, device, os.getpid() * 100 + i)
        return

    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    log(f"device: {hw}; torch {torch.__version__}; {len(data.train_y)} images; teacher {args.teacher} "
        f"x{args.teacher_width}, student {args.student} x{args.student_width}; kdsweep's teacher forward in "
        f"{'bf16' if teacher_bf16('auto', device) else 'fp32'} (precision auto)")
    rows: list[dict] = []

    def record(fn, *a):
        try:
            out = fn(*a)
        except Exception as exc:  # keep going: one broken variant must not lose the other numbers
            out = {"variant": f"{fn.__name__}{a[-1:] if isinstance(a[-1], str) else ''}", "error": repr(exc)[:300]}
        for row in out if isinstance(out, list) else [out]:
            rows.append(row)
            log(json.dumps(row))
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
        return out

    seed = record(bench_seed, args, data, teacher_net, device) if "seed" in sections else None
    online_rows = []
    for accel in args.accel.split(","):
        if "online" in sections:
            online_rows.append(record(lambda a, d, s, dev, acc: bench_trainer(a, d, s, dev, acc, "online teacher"),
                                      args, data, online, device, accel))
        if "table" in sections:
            record(lambda a, d, s, dev, acc: bench_trainer(a, d, s, dev, acc, "view table"),
                   args, data, table, device, accel)
    packed_rows = []
    if "packed" in sections:
        for k in args.pack:
            packed_rows.append(record(lambda a, d, s, dev, kk: bench_packed(a, d, s, dev, kk, "online teacher"),
                                      args, data, online, device, k))
    feature_rows = record(bench_features, args, data, online, device) if "features" in sections else []
    if "steps" in sections:
        record(bench_steps, args, data, online, device)
    if "build" in sections:
        record(bench_build, args, data, online, device)
    if "trial" in sections:
        record(bench_trial, args, data, table, device)
    if "study" in sections:
        record(bench_study, args, data, table, device)

    log("")
    log(f"| variant | img/s | x seed |")
    log(f"| --- | --- | --- |")
    base = seed["img_per_s"] if seed and "img_per_s" in seed else None
    for r in rows:
        if "img_per_s" in r:
            ratio = f"{r['img_per_s'] / base:.2f}x" if base else "-"
            log(f"| {r['variant']} | {r['img_per_s']:,.0f} | {ratio} |")
    best = max((r["img_per_s"] for r in online_rows if "img_per_s" in r), default=None)
    table_best = max((r["img_per_s"] for r in rows if "img_per_s" in r and "view table" in r["variant"]), default=None)
    if base and table_best:
        log(f"speedup_table: {table_best / base:.2f}x")
    packed_best = max((r["img_per_s"] for r in packed_rows if "img_per_s" in r), default=None)
    if base and packed_best:
        log(f"speedup_packed: {packed_best / base:.2f}x")
    kd_online = next((r["img_per_s"] for r in feature_rows if r.get("method") == "kd"), None)
    for r in feature_rows if isinstance(feature_rows, list) else []:
        if kd_online and r.get("method") not in (None, "kd") and "img_per_s" in r:
            log(f"feature_vs_kd {r['method']}: {r['img_per_s'] / kd_online:.2f}")
    if base and best:
        log(f"speedup: {best / base:.2f}x")


if __name__ == "__main__":
    main()
