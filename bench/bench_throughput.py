"""Training throughput: this engine's train step against a plain fp32 contiguous loop, same model, batch, optimiser.

Full forward and backward passes with an SGD (momentum 0.9) step, data already in memory. The engine's step uses what
``core.training.engine.step_settings`` picks for the device (channels_last, bf16 autocast on GPUs that have it, fused
optimiser steps, all CPU threads); the reference is ``net(x)`` / ``backward`` / ``opt.step()`` in fp32, contiguous,
default optimiser implementation. Warm-up steps are excluded (and reported); the figure is the median of interleaved
repeats. The fraction of the machine's matmul peak uses the model's FLOPs per step (torch's FlopCounterMode, forward
plus backward) against a large fp32 (and on GPUs bf16) matmul measured in the same run.

    python bench/bench_throughput.py                          # resnet50 @128 and Lite0 @224, batch 32 (CPU)
    python bench/bench_throughput.py --batch 16 --repeats 3 --steps 2 --lite0-size 96    # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Achieved FLOP/s of an n x n matmul (the machine's practical peak for that dtype)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_step(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward FLOPs (FlopCounterMode) x 3: the backward pass costs about twice the forward (grad of the inputs and of
    the weights). Counting the backward directly over-counts depthwise convolutions (their weight gradient is
    counted as a dense one), which put EfficientNet-Lite0 above 100% of peak."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return 3.0 * float(counter.get_total_flops())


class Variant:
    """One way to run train steps on a model: ``plain`` (reference) or ``engine``."""

    def __init__(self, arch: str, kind: str, size: int, batch: int, device: torch.device, compile_net: bool) -> None:
        import timm

        from core.training.engine import step_settings

        torch.manual_seed(0)
        self.kind, self.device = kind, device
        self.net = timm.create_model(arch, pretrained=False, num_classes=100).to(device).train()
        self.x = torch.randn(batch, 3, size, size, device=device)
        self.y = torch.randint(0, 100, (batch,), device=device)
        self.amp = False
        self.compile_seconds = 0.0
        if kind == "engine":
            s = step_settings(device, size)
            self.settings = s
            if s.channels_last:
                self.net = self.net.to(memory_format=torch.channels_last)
                self.x = self.x.contiguous(memory_format=torch.channels_last)
            self.amp = s.amp_bf16
            self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9, fused=s.fused_optimizer)
            self.forward = torch.compile(self.net) if compile_net else self.net
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
            self.forward = self.net

    def step(self) -> None:
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext()
        with ctx:
            out = self.forward(self.x)
        loss = F.cross_entropy(out.float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def timed(self, steps: int) -> float:
        """Images per second over ``steps`` steps."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        _sync(self.device)
        return steps * self.x.shape[0] / (time.perf_counter() - t0)


def bench_model(label: str, arch: str, size: int, args, device: torch.device, peaks: dict[str, float]) -> list[str]:
    variants = {k: Variant(arch, k, size, args.batch, device, args.compile and k == "engine")
                for k in ("plain", "engine")}
    warm = {}
    for k, v in variants.items():
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            v.step()
        _sync(device)
        warm[k] = time.perf_counter() - t0
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):  # interleaved: plain, engine, plain, engine...
        for k, v in variants.items():
            rates[k].append(v.timed(args.steps))
    flops = flops_per_step(variants["plain"].net, variants["plain"].x[:1]) * args.batch
    lines = []
    med = {k: statistics.median(r) for k, r in rates.items()}
    for k in variants:
        peak = peaks["bf16"] if k == "engine" and variants[k].amp else peaks["fp32"]
        frac = med[k] / args.batch * flops / peak
        extra = ""
        if k == "engine":
            s = variants[k].settings
            extra = f"channels_last={s.channels_last} bf16={s.amp_bf16} fused={s.fused_optimizer}" + (
                " compiled" if args.compile else "")
        lines.append(f"{label:<28} {k:<7} {med[k]:>9.1f} {med[k] / med['plain']:>6.2f} {frac:>9.3f} "
                     f"{warm[k]:>8.1f}  {extra}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--resnet-size", type=int, default=128)
    ap.add_argument("--lite0-size", type=int, default=224)
    ap.add_argument("--models", default="resnet50,lite0", help="which of resnet50, lite0 (comma-separated)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the engine's model (compile time is "
                    "in the warm-up column)")
    args = ap.parse_args()

    from core.device import device_info, torch_device

    device = torch_device()
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    note = f"fp32 matmul peak {peaks['fp32'] / 1e9:.0f} GFLOP/s"
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        peaks["bf16"] = matmul_peak(device, torch.bfloat16, n=8192)
        note += f", bf16 {peaks['bf16'] / 1e12:.1f} TFLOP/s (fractions: fp32 peak for plain, bf16 for engine)"
    print(f"{device_info().label}; threads {torch.get_num_threads()}; batch {args.batch}; {note}")
    print(f"{'model':<28} {'variant':<7} {'img/s':>9} {'x plain':>6} {'of peak':>9} {'warm-s':>8}")
    chosen = set(args.models.split(","))
    for key, label, arch, size in (("resnet50", "resnet50 @%d" % args.resnet_size, "resnet50", args.resnet_size),
                                   ("lite0", "efficientnet_lite0 @%d" % args.lite0_size, "tf_efficientnet_lite0",
                                    args.lite0_size)):
        if key not in chosen:
            continue
        for line in bench_model(label, arch, size, args, device, peaks):
            print(line, flush=True)


if __name__ == "__main__":
    main()
