"""fp32 vs bf16 autocast, NCHW vs channels_last: forward and training-step speed of two models.

    python benchmarks/precision_probe.py            # CPU; --device cuda for a GPU

Decides which parts of a KD step pay for bf16 on a machine (see core/precision.py: teacher_bf16).
Prints img/s for each (model, layout, precision): the median of --forwards timed forwards
(eval, inference mode) and of --steps timed steps (forward, a loss, backward, SGD + momentum),
on random 3x32x32 batches, after one untimed call of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsweep.core.models import build_model  # noqa: E402
from kdsweep.core.precision import cpu_has_native_bf16  # noqa: E402


def median_seconds(fn, n: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="resnet18:0.5,resnet20:0.5", help="arch:width, comma separated")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--forwards", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"native CPU bf16: {cpu_has_native_bf16()}, batch {args.batch}")
    print("| model | layout | fp32 forward | bf16 forward | fp32 step | bf16 step |")
    print("| --- | --- | --- | --- | --- | --- |")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    for item in args.models.split(","):
        arch, width = item.split(":")
        model = build_model(arch, num_classes=10, width=float(width)).to(device)
        for layout in (torch.contiguous_format, torch.channels_last):
            net, xx = model.to(memory_format=layout), x.contiguous(memory_format=layout)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            rates = []
            for kind in ("forward", "step"):
                for bf16 in (False, True):
                    def forward():
                        net.eval()
                        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                            net(xx)

                    def step():
                        net.train()
                        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                            loss = net(xx).float().logsumexp(1).mean()
                        opt.zero_grad()
                        loss.backward()
                        opt.step()

                    n = args.forwards if kind == "forward" else args.steps
                    rates.append(args.batch / median_seconds(forward if kind == "forward" else step, n, device))
            name = "NCHW" if layout is torch.contiguous_format else "channels_last"
            print(f"| {arch} x{width} | {name} | " + " | ".join(f"{r:,.0f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
