"""What ``data.image_size`` costs on CIFAR: training img/s of one model at 32 px and resized on the device.

    python benchmarks/image_size.py                                  # CPU, torchvision:mobilenet_v3_small
    python benchmarks/image_size.py --arch resnet8 --sizes 32,64 --device cuda

Batches come from the trainer's own loader (core/loader.py: crop, flip, resize, normalise on the
device) on generated 32 px images; each step is a forward, cross-entropy, backward and SGD update.
Prints, per size, the median over --steps timed steps (after one untimed step) of training img/s,
and the loader alone (resize included) in img/s, so the resize's own share shows; each both per
wall-clock second and per CPU-second of this process (the latter is what a shared CPU still shows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsweep.core.data import DeviceLoader, synthetic_imageset  # noqa: E402
from kdsweep.core.models import build_model  # noqa: E402


def median_seconds(fn, n: int, device: torch.device) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (this process, all threads) of ``fn`` over ``n`` calls.

    On a shared, loaded CPU the wall time mostly measures the other processes; the CPU time is the
    work this step itself costs.
    """
    fn()
    wall, cpu = [], []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="torchvision:mobilenet_v3_small")
    p.add_argument("--sizes", default="32,64", help="comma separated; 32 is CIFAR's own")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    data = synthetic_imageset(n_train=args.batch * 2, n_test=8, num_classes=10, size=32)
    print(f"{args.arch}, batch {args.batch}, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for size in (int(s) for s in args.sizes.split(",")):
        loader = DeviceLoader(data.train_x, data.train_y, batch_size=args.batch, device=device, mean=data.mean,
                              std=data.std, train=True, resize=size)
        draws = loader.draws(0)
        torch.manual_seed(0)
        model = build_model(args.arch, num_classes=10).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def load():
            return loader.batch_at(draws, slice(0, args.batch))

        def step():
            batch = load()
            loss = torch.nn.functional.cross_entropy(model(batch.x), batch.y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        (w_step, c_step), (w_load, c_load) = median_seconds(step, args.steps, device), median_seconds(load, args.steps * 4,
                                                                                                     device)
        print(f"  {size:>4} px: train {args.batch / w_step:8.1f} img/s wall, {args.batch / c_step:8.1f} img per "
              f"CPU-second;  loader alone {args.batch / w_load:9.1f} img/s wall, {args.batch / c_load:9.1f} per CPU-s")


if __name__ == "__main__":
    main()
