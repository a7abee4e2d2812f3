"""Students' latency as a study logs it: ms per image at batch 1, images/s at batch 64.

    python benchmarks/latency.py                                   # resnet8, resnet20, resnet56 on the CPU
    python benchmarks/latency.py --archs resnet8 cnn_student --repeats 50 --device cuda

The same call ``study/speed.py`` makes once per study and arch (``core/latency.measure``: eval
mode, inference mode, the layout the trainer uses, the median of --repeats timed runs after
--warmup untimed ones), on random 3x32x32 images, 10 classes. It prints one line per arch and
the device's name; numbers on a busy machine are slower than on an idle one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsweep.core.latency import device_name, measure  # noqa: E402
from kdsweep.core.models import build_model, count_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet8", "resnet20", "resnet56"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="time under bf16 autocast (a student trained in bf16)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device: {device_name(device)}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.repeats} timed runs after {args.warmup} warm-up, median; {args.image_size}px, "
          f"{'bf16' if args.bf16 else 'fp32'}")
    print(f"{'arch':<14}{'width':>6}{'params':>11}{'latency_ms':>12}{'throughput_ips':>16}{'wall_s':>8}")
    for arch in args.archs:
        model = build_model(arch, num_classes=10, width=args.width)
        start = time.perf_counter()
        speed = measure(model, image_size=(args.image_size, args.image_size), device=device, bf16=args.bf16,
                        repeats=args.repeats, warmup=args.warmup)
        print(f"{arch:<14}{args.width:>6.2f}{count_params(model):>11,}{speed.latency_ms:>12.3f}"
              f"{speed.throughput_ips:>16,.0f}{time.perf_counter() - start:>8.1f}")


if __name__ == "__main__":
    main()
