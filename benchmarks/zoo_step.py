"""Training-step speed of the CIFAR-100 benchmark zoo: what one 240-epoch benchmark run costs here.

    python benchmarks/zoo_step.py --device cpu --batch 64 --steps 5

For each network at 100 classes: one SGD step (forward, cross-entropy, backward, update) on a
batch of random 32px images, in fp32, after 2 warm-up steps; the median of ``--steps`` timed steps.
Prints ms per step, images per second, and the hours one 240-epoch run on 50,000 images would
take at that speed (the training steps only: no evaluation, no teacher forward).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsweep.core.models import build_model, count_params  # noqa: E402

ZOO = ["resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13",
       "vgg16", "vgg19", "resnet50", "mobilenetv2", "shufflenetv1", "shufflenetv2"]


def step_seconds(name: str, device: torch.device, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(name, num_classes=100).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    times = []
    for i in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # the first steps allocate and pick kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--models", nargs="*", default=ZOO)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}")
    print(f"{'model':<14} {'params':>11} {'ms/step':>9} {'img/s':>8} {'h/240 ep':>9}")
    for name in args.models:
        s = step_seconds(name, device, args.batch, args.steps)
        ips = args.batch / s
        hours = 240 * 50_000 / ips / 3600
        params = count_params(build_model(name, num_classes=100))
        print(f"{name:<14} {params:>11,} {1000 * s:>9.1f} {ips:>8.0f} {hours:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
