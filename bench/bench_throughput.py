"""Training throughput: this engine's train step against a plain fp32 contiguous loop, same model, batch, optimiser.

Full forward and backward passes with an SGD (momentum 0.9) step, data already in memory. The engine's step uses what
``core.training.runtime.step_settings`` picks for the device (channels_last, bf16 autocast on GPUs that have it, fused
optimiser steps, all CPU threads); the reference is ``net(x)`` / ``backward`` / ``opt.step()`` in fp32, contiguous,
default optimiser implementation. Each variant runs in its own process, so that what the engine sets process-wide
(``core.device.keep_freed_memory``: glibc keeps freed activation buffers instead of faulting in fresh pages every step)
applies to it alone and the reference runs as a plain Python process would; the parent tells them in turn to run a
repeat, so only one computes at a time. Warm-up steps are excluded (and reported); img/s is the median over the
repeats, ``x plain`` the median of each repeat's ratio to the plain repeat just before it. The fraction of the
machine's matmul peak uses the model's FLOPs per step (3 x torch's FlopCounterMode forward count) against a large
fp32 (and on GPUs bf16) matmul measured in the same run.

The engine is measured twice: eager (``engine``: what a run of under 30 minutes uses) and compiled (``compiled``:
``torch.compile`` of the forward, which the engine's default ``options.compile = "auto"`` switches on once a run
has more than 30 minutes left; its compile time is in the warm-up column).

    python bench/bench_throughput.py                          # resnet50 @128 and Lite0 @224, batch 32 (CPU)
    python bench/bench_throughput.py --batch 16 --repeats 3 --steps 2 --lite0-size 96    # smoke run
"""

from __future__ import annotations

import argparse
import json
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

        from core.training.runtime import step_settings

        torch.manual_seed(0)
        self.kind, self.device = kind, device
        self.net = timm.create_model(arch, pretrained=False, num_classes=100).to(device).train()
        self.x = torch.randn(batch, 3, size, size, device=device)
        self.y = torch.randint(0, 100, (batch,), device=device)
        self.amp = False
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


class Remote:
    """A ``Variant`` in a child process of its own, driven line by line over its stdin/stdout."""

    def __init__(self, kind: str, arch: str, size: int, args) -> None:
        import subprocess

        cmd = [sys.executable, __file__, "--serve", kind, "--arch", arch, "--size", str(size),
               "--batch", str(args.batch)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self.ask("info")

    def ask(self, command: str):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"variant process exited (code {self.proc.wait()}) on {command!r}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def serve(args) -> None:
    """The child side of ``Remote``: build one variant, then answer commands until stdin closes."""
    from core.device import keep_freed_memory, torch_device

    device = torch_device()
    engine = args.serve != "plain"
    freed = keep_freed_memory() if engine else False  # as the job worker does
    v = Variant(args.arch, "engine" if engine else "plain", args.size, args.batch, device, args.serve == "compiled")
    for line in sys.stdin:
        command, _, n = line.strip().partition(" ")
        if command == "info":
            s = getattr(v, "settings", None)
            out = {"amp": v.amp, "flops": flops_per_step(v.net, v.x[:1]) * args.batch if args.serve == "plain" else 0,
                   "extra": "" if s is None else (f"channels_last={s.channels_last} bf16={s.amp_bf16} "
                                                  f"fused={s.fused_optimizer} keep_freed_memory={freed}")}
        elif command == "warmup":
            t0 = time.perf_counter()
            for _ in range(int(n)):
                v.step()
            _sync(device)
            out = time.perf_counter() - t0
        elif command == "timed":
            out = v.timed(int(n))
        else:
            raise SystemExit(f"unknown command {command!r}")
        print(json.dumps(out), flush=True)


def bench_model(label: str, arch: str, size: int, args, peaks: dict[str, float]) -> list[str]:
    variants = {k: Remote(k, arch, size, args) for k in ("plain", "engine", "compiled")[:3 if args.compiled else 2]}
    warm = {k: v.ask(f"warmup {args.warmup}") for k, v in variants.items()}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):  # interleaved: plain, engine, compiled, plain, engine...
        for k, v in variants.items():
            rates[k].append(v.ask(f"timed {args.steps}"))
    for v in variants.values():
        v.close()
    flops = variants["plain"].info["flops"]
    lines = []
    med = {k: statistics.median(r) for k, r in rates.items()}
    for k, v in variants.items():
        peak = peaks["bf16"] if v.info["amp"] else peaks["fp32"]
        frac = med[k] / args.batch * flops / peak
        # x plain: the median of each repeat's ratio to the plain repeat just before it (drift on a shared host
        # cancels out); lo-hi: the smallest and largest of those ratios
        ratios = [r / p for r, p in zip(rates[k], rates["plain"])]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        lines.append(f"{label:<28} {k:<8} {med[k]:>7.1f} {statistics.median(ratios):>7.2f} {spread:>9} {frac:>7.3f} "
                     f"{warm[k]:>8.1f}  {v.info['extra']}")
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
    ap.add_argument("--no-compiled", dest="compiled", action="store_false",
                    help="skip the compiled engine (its compile takes ~80 s a model on 2 CPU cores)")
    # the child side of Remote
    ap.add_argument("--serve", choices=("plain", "engine", "compiled"), help=argparse.SUPPRESS)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args)

    from core.device import device_info, torch_device

    device = torch_device()
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    note = f"fp32 matmul peak {peaks['fp32'] / 1e9:.0f} GFLOP/s"
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        peaks["bf16"] = matmul_peak(device, torch.bfloat16, n=8192)
        note += f", bf16 {peaks['bf16'] / 1e12:.1f} TFLOP/s (fractions: fp32 peak for plain, bf16 for engine)"
    print(f"{device_info().label}; threads {torch.get_num_threads()}; batch {args.batch}; {note}")
    print(f"{'model':<28} {'variant':<8} {'img/s':>7} {'x plain':>7} {'lo-hi':>9} {'of peak':>7} {'warm-s':>8}")
    chosen = set(args.models.split(","))
    for key, label, arch, size in (("resnet50", f"resnet50 @{args.resnet_size}", "resnet50", args.resnet_size),
                                   ("lite0", f"efficientnet_lite0 @{args.lite0_size}", "tf_efficientnet_lite0",
                                    args.lite0_size)):
        if key not in chosen:
            continue
        for line in bench_model(label, arch, size, args, peaks):
            print(line, flush=True)


if __name__ == "__main__":
    main()
