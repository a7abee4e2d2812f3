"""K students in one step: separate networks, one grouped network, or (CUDA) K streams in one graph.

    python benchmarks/grouped_students.py --device cpu
    python benchmarks/grouped_students.py --device cuda          # bf16, channels_last, CUDA graphs

A study's trials train many students of one architecture and width on the same batches (a
packed group, ``kdsweep.core.packing``). This script measures, before any of it is built into
the trainer, which way of running K such students in one step is fastest:

  separate  K networks, one after another (what a packed group does today).
  grouped   one network holding all K: each conv has K times the channels and ``groups=K`` (the
            first conv reads the shared image with ``groups=1``), BatchNorm over K*C channels,
            a batched linear head. One kernel per layer instead of K.
  streams   (CUDA with graphs) the K separate networks captured in one CUDA graph, each on its
            own stream, so that their small kernels can run at the same time.

Every variant does, per step: forward of one batch through each student, cross-entropy, backward
and SGD with momentum. No teacher (a table lookup costs next to nothing) and no augmentation, the
same for all. Before timing, the script checks on the device that the grouped network computes
what the K networks compute (logits and one SGD step), and prints the largest difference.
Printed: student images per second (K * batch * steps / seconds) and the ratio to ``separate``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdsweep.core.models import build_model  # noqa: E402

DEFAULTS = {"cpu": dict(batch_size=128, steps=4, k="1,2,4,8", width="0.5,1.0"),
            "cuda": dict(batch_size=512, steps=30, k="1,4,8,16", width="0.5,1.0")}


class GroupedConv2d(nn.Module):
    """K convs of one shape as one: K*C_out channels; ``shared_input`` reads one C_in-channel input."""

    def __init__(self, convs: list[nn.Conv2d], shared_input: bool) -> None:
        super().__init__()
        c = convs[0]
        self.weight = nn.Parameter(torch.cat([m.weight.detach() for m in convs]).clone())
        self.bias = nn.Parameter(torch.cat([m.bias.detach() for m in convs]).clone()) if c.bias is not None else None
        self.stride, self.padding, self.dilation = c.stride, c.padding, c.dilation
        self.groups = c.groups * (1 if shared_input else len(convs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def grouped_batchnorm(bns: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    """One BatchNorm over K*C channels: per-channel statistics are each student's own."""
    b = bns[0]
    out = nn.BatchNorm2d(b.num_features * len(bns), eps=b.eps, momentum=b.momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, name).copy_(torch.cat([getattr(m, name) for m in bns]))
    return out


class GroupedLinear(nn.Module):
    """K linear layers applied to ``[B, K*in]`` or ``[B, K, in]``; returns ``[B, K, out]``."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        self.k = len(linears)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in linears]).clone())  # K, out, in
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears]).clone())  # K, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.k, -1)
        return torch.einsum("bki,koi->bko", x, self.weight) + self.bias


def grouped(students: list[nn.Module]) -> nn.Module:
    """One network computing all K students: ``[B, C, H, W]`` -> ``[B, K, classes]``.

    Works for kdsweep's networks (convs, BatchNorm, ReLU, pooling, residual adds, flatten,
    linear heads), whose first conv in module order reads the image.
    """
    net = copy.deepcopy(students[0])
    named = [dict(s.named_modules()) for s in students]
    first_conv = True
    for parent_name, parent in list(net.named_modules()):
        for name, child in list(parent.named_children()):
            path = f"{parent_name}.{name}" if parent_name else name
            same = [n[path] for n in named]
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, GroupedConv2d(same, shared_input=first_conv))
                first_conv = False
            elif isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, grouped_batchnorm(same))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, GroupedLinear(same))
    return net


class Variant:
    """One way of training K students: ``step()`` is forward, loss, backward and SGD for all K."""

    def __init__(self, kind: str, students: list[nn.Module], x: torch.Tensor, y: torch.Tensor, amp) -> None:
        self.kind, self.x, self.y, self.amp, self.k = kind, x, y, amp, len(students)
        self.nets = [grouped(students)] if kind == "grouped" else [copy.deepcopy(s) for s in students]
        # one optimizer per network: separate students keep separate steps, as in a packed group
        fused = x.device.type == "cuda"  # the trainer's optimizer on CUDA
        self.opts = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, fused=fused)
                     for n in self.nets]
        self.graph: torch.cuda.CUDAGraph | None = None

    def logits(self) -> torch.Tensor:
        """``[B, K, classes]`` for the current batch."""
        with self.amp():
            if self.kind == "grouped":
                return self.nets[0](self.x)
            return torch.stack([n(self.x) for n in self.nets], 1)

    def _one(self, i: int) -> None:
        net, opt = self.nets[i], self.opts[i]
        with self.amp():
            out = net(self.x)
            if self.kind == "grouped":  # [B, K, classes]: sum of the K students' mean losses
                loss = F.cross_entropy(out.flatten(0, 1).float(), self.y.repeat_interleave(self.k)) * self.k
            else:
                loss = F.cross_entropy(out.float(), self.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eager_step(self) -> None:
        for i in range(len(self.nets)):
            self._one(i)

    def _captured_body(self) -> None:
        if self.kind != "streams":
            self.eager_step()
            return
        main = torch.cuda.current_stream()
        for i, stream in enumerate(self.streams):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                self._one(i)
        for stream in self.streams:
            main.wait_stream(stream)

    def capture(self, warmup: int = 3) -> None:
        """Warm up on a side stream (optimizer state, cuDNN choices), then capture one step."""
        self.streams = [torch.cuda.Stream() for _ in self.nets]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.eager_step()
        torch.cuda.current_stream().wait_stream(side)
        for opt in self.opts:
            opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._captured_body()

    def step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.eager_step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check(students: list[nn.Module], x: torch.Tensor, y: torch.Tensor, amp) -> tuple[float, float]:
    """Largest |difference| of the K students' logits, grouped against separate: before and after one step."""
    sep, grp = Variant("separate", students, x, y, amp), Variant("grouped", students, x, y, amp)
    with torch.no_grad():
        before = (sep.logits() - grp.logits()).abs().max().item()
    sep.eager_step()
    grp.eager_step()
    with torch.no_grad():
        after = (sep.logits() - grp.logits()).abs().max().item()
    return before, after


def measure(variant: Variant, steps: int, device: torch.device) -> float:
    for _ in range(2):
        variant.step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        variant.step()
    sync(device)
    return variant.k * variant.x.shape[0] * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--k", help="students per step, comma separated")
    p.add_argument("--width", help="student widths, comma separated")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, help="timed steps per measurement")
    p.add_argument("--variants", default="separate,grouped,streams")
    p.add_argument("--no-graph", action="store_true", help="CUDA: time eager steps instead of CUDA graphs")
    args = p.parse_args()
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    use_graph = cuda and not args.no_graph
    torch.manual_seed(0)
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_flush_denormal(True)
    # no weight-cast cache: it must be off under graph capture (as in the trainer)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)) if cuda else contextlib.nullcontext
    layout = torch.channels_last if cuda else torch.contiguous_format
    variants = [v for v in args.variants.split(",") if v != "streams" or use_graph]
    print(f"device {torch.cuda.get_device_name(device) if cuda else 'cpu'}, torch {torch.__version__}, "
          f"{args.arch}, batch {args.batch_size}, {args.steps} timed steps, "
          f"{'CUDA graphs, bf16, channels_last' if use_graph else 'eager'}", flush=True)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    for width in (float(w) for w in args.width.split(",")):
        for k in (int(v) for v in args.k.split(",")):
            students = [build_model(args.arch, num_classes=10, width=width).to(device, memory_format=layout)
                        for _ in range(k)]
            if k > 1 and "grouped" in variants:
                before, after = check(students, x, y, amp)
                print(f"check {args.arch} x{width} K={k}: grouped vs separate logits, max |diff| "
                      f"{before:.2e} before and {after:.2e} after one SGD step", flush=True)
            base = None
            for kind in variants:
                try:
                    v = Variant(kind, students, x, y, amp)
                    if use_graph:
                        v.capture()
                    rate = measure(v, args.steps, device)
                except Exception as exc:  # one variant that cannot run (capture, memory) leaves the others
                    print(f"{args.arch} x{width} K={k} {kind}: failed: {type(exc).__name__}: {exc}"[:400], flush=True)
                    continue
                base = rate if kind == "separate" else base
                ratio = f" ({rate / base:.2f}x separate)" if base and kind != "separate" else ""
                print(f"{args.arch} x{width} K={k} {kind}: {rate:,.0f} student img/s{ratio}", flush=True)
                del v
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
