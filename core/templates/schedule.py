"""Learning rates derived from a template's hyperparameters, computed in one place for the trainer and the UI.

- ``base_lrate``: lrate = batch_size x per_item_lrate, or per_128_lrate x batch_size / 128, or the template's lrate.
- Step schedule (templates with init_epochs/step_epochs): the base rate for init_epochs, then multiplied by
  step_factor every step_epochs (epochs counted from 0; the drop happens at the start of the epoch).
- Cosine (RSB-A1, as MMClassification's CosineAnnealing with linear warmup by iteration): the rate follows a cosine
  from lrate down to batch_size x per_item_min_lrate over the run; during the first warmup_iters steps it is
  multiplied by 1 - (1 - step / warmup_iters) x (1 - warmup_ratio), rising from warmup_ratio x the rate.
- Warmup then cosine (the detectors, ``recipe.DETECTOR_WARMUP_STEPS``): the cosine above down to 0, its warmup over
  min(DETECTOR_WARMUP_STEPS, a tenth of the run) steps from ``recipe.WARMUP_START`` of the rate.
- Constant otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import ValidationError
from core.templates.recipe import DETECTOR_WARMUP_STEPS, WARMUP_START
from core.templates.registry import get_template, validate

MAX_CURVE_POINTS = 600  # evenly spaced samples of the curve, plus the epoch boundaries where the step schedule drops


def base_lrate(kind: str, name: str, params: Mapping[str, Any] | None) -> float:
    """The learning rate per step at the start of the schedule (after warmup)."""
    p = validate(kind, name, params)
    if "per_item_lrate" in p:
        return float(p["batch_size"] * p["per_item_lrate"])
    if "per_128_lrate" in p:
        return float(p["per_128_lrate"] * p["batch_size"] / 128)
    return float(p["lrate"])


def steps_per_epoch(kind: str, name: str, params: Mapping[str, Any] | None, train_size: int) -> int:
    """Optimiser steps in one epoch: num_items_per_epoch (or the training split's size when 0/absent) / batch_size,
    rounded up."""
    p = validate(kind, name, params)
    items = p.get("num_items_per_epoch") or train_size
    if items <= 0:
        raise ValidationError("The training split is empty: nothing to train on")
    return max(1, math.ceil(items / p["batch_size"]))


@dataclass(frozen=True)
class Schedule:
    """A template's learning rate as a function of the global step (0-based), for a fixed epoch length."""

    kind: str
    base: float
    steps_per_epoch: int
    num_epochs: int
    init_epochs: int = 0
    step_epochs: int = 1
    step_factor: float = 1.0
    min_lr: float = 0.0
    warmup_iters: int = 0
    warmup_ratio: float = 1.0

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.kind == "step":
            epoch = step // self.steps_per_epoch
            drops = 0 if epoch < self.init_epochs else 1 + (epoch - self.init_epochs) // self.step_epochs
            return self.base * self.step_factor**drops
        if self.kind == "cosine":
            progress = min(step, self.total_steps) / max(1, self.total_steps)
            lr = self.min_lr + (self.base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
            if step < self.warmup_iters:
                lr *= 1.0 - (1.0 - step / self.warmup_iters) * (1.0 - self.warmup_ratio)
            return lr
        return self.base

    def multiplier(self, step: int) -> float:
        """lr / base (for ``torch.optim.lr_scheduler.LambdaLR``); 0 when the base rate is 0."""
        return self(step) / self.base if self.base else 0.0


def make_schedule(kind: str, name: str, params: Mapping[str, Any] | None, steps_per_epoch: int) -> Schedule:
    """The schedule of a template with these hyperparameters and this many steps per epoch."""
    if steps_per_epoch < 1:
        raise ValidationError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    template = get_template(kind, name)
    p = validate(kind, name, params)
    base = base_lrate(kind, name, p)
    common = {"base": base, "steps_per_epoch": int(steps_per_epoch), "num_epochs": p["num_epochs"]}
    if template.schedule == "step":
        return Schedule("step", init_epochs=p["init_epochs"], step_epochs=p["step_epochs"],
                        step_factor=p["step_factor"], **common)
    if template.schedule == "cosine":
        return Schedule("cosine", min_lr=p["batch_size"] * p["per_item_min_lrate"], warmup_iters=p["warmup_iters"],
                        warmup_ratio=p["warmup_ratio"], **common)
    if template.schedule == "warmup_cosine":
        total = p["num_epochs"] * int(steps_per_epoch)
        return Schedule("cosine", min_lr=0.0, warmup_iters=max(1, min(DETECTOR_WARMUP_STEPS, total // 10)),
                        warmup_ratio=WARMUP_START, **common)
    return Schedule("constant", **common)


def lr_at(kind: str, name: str, params: Mapping[str, Any] | None, step: int, steps_per_epoch: int) -> float:
    """The learning rate at a global step (0-based)."""
    return make_schedule(kind, name, params, steps_per_epoch)(step)


def lr_curve(kind: str, name: str, params: Mapping[str, Any] | None, steps_per_epoch: int) -> list[tuple[float, float]]:
    """(epoch as a float, lr) over the whole run, sampled finely enough to draw: even samples, the warmup, and both
    sides of every epoch boundary (so the step schedule's drops are vertical)."""
    sched = make_schedule(kind, name, params, steps_per_epoch)
    total = sched.total_steps
    steps = {round(i * total / MAX_CURVE_POINTS) for i in range(MAX_CURVE_POINTS + 1)}
    if sched.kind == "step":
        for e in range(sched.num_epochs + 1):
            steps.update({e * steps_per_epoch, max(0, e * steps_per_epoch - 1)})
    if sched.kind == "cosine" and sched.warmup_iters:
        w = min(sched.warmup_iters, total)
        steps.update(round(i * w / 50) for i in range(51))
    # The point at the very end shows the rate of the last step (there is no step ``total``).
    return [(s / steps_per_epoch, sched(min(s, max(0, total - 1)))) for s in sorted(steps)]
