"""How a training run reports progress and is asked to stop: the job runner and the CLI subclass ``Callbacks``."""

from __future__ import annotations

import sys
import time

from core.records import StepProgress


class Callbacks:
    """No-op hooks. ``train`` calls them from its own thread, between steps; none may raise to stop a run."""

    def on_start(self, info: dict) -> None:
        """Once, before the first step: kind, template, params, device, items, steps_per_epoch, epochs, start_epoch."""

    def on_step(self, p: StepProgress) -> None:
        """After each step: epoch, step, steps_per_epoch, images_per_sec, loss, lr, eta_s, phase.

        ``phase`` is "train" for optimiser steps, "features" while a frozen backbone's features are computed once
        (then epoch is 0, step counts batches of images and loss is NaN).
        """

    def on_epoch(self, epoch: int, metrics: dict) -> None:
        """After each completed epoch (1-based) with its metrics."""

    def should_stop(self) -> bool:
        """Polled between steps; True makes the run save a checkpoint and return ``stopped=True``."""
        return False

    def log(self, line: str) -> None:
        """A human-readable line for the run's log."""


class ConsoleCallbacks(Callbacks):
    """A progress bar on stderr for ``python -m core train --foreground`` (tqdm)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._bar = None
        self._bar_epoch: int | None = None

    def on_start(self, info: dict) -> None:
        self.log(
            f"training {info['kind']} {info['template']} on {info['items']} images ({info['device']}), "
            f"{info['epochs']} epochs of {info['steps_per_epoch']} steps"
        )

    def on_step(self, p: StepProgress) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        bar = self._bar
        if bar is None or self._bar_epoch != p["epoch"]:
            self._close()
            bar = self._bar = tqdm(total=p["steps_per_epoch"], desc=f"epoch {p['epoch']}", file=sys.stderr,
                                   leave=False)
            self._bar_epoch = p["epoch"]
        bar.update(1)
        bar.set_postfix(loss=f"{p['loss']:.4f}", lr=f"{p['lr']:.2e}", ips=f"{p['images_per_sec']:.0f}")

    def on_epoch(self, epoch: int, metrics: dict) -> None:
        self._close()
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
        self.log(f"epoch {epoch}: {shown}")

    def log(self, line: str) -> None:
        if not self.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
