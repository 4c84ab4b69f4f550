"""The head tunes itself (``tune_head``): with a frozen backbone the features are cached and an epoch of the head takes
well under a second, so before the real run each candidate learning rate trains the head, from the run's own initial
weights and for the run's own epochs, on a fold of the training split, and the rate with the lowest loss on the
held-out rest of the split wins. The run then trains on the whole training split with it, exactly as a run with that
rate set by hand would (same initial weights, same batches).

Nothing here runs when ``tune_head`` is off: such a run is unchanged, weight for weight.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from core.templates import get_template
from core.templates.schedule import make_schedule
from core.training import data as tdata
from core.training.build import Run
from core.training.modes import Batch
from core.training.modes.features import FeaturesMode
from core.training.optim import make_optimizer, set_lr
from core.training.state import StopRequested

# Candidate rates: half-decades around the measured optimum of the transfer heads on Caltech-101 and Fashion-MNIST
# subsets (bench/README.md, "The head tunes itself"); only those within the template's bounds are tried.
LRATE_GRID = (0.003, 0.01, 0.03, 0.1)
VAL_SHARE = 0.2  # of each concept's training images, held out to compare the candidates
MIN_VAL_ITEMS = 10  # fewer held-out images than this say nothing: the run keeps the rate it was given
PARAM = "lrate"


def tuning_applies(run: Run) -> str | None:
    """Why the head cannot tune itself in this run (None: it can)."""
    if not run.plan.params.get("tune_head"):
        return "off"
    if not run.mode.frozen_backbone:
        return ("the backbone trains too (base_gradient_multiplier above 0), so the features are not cached and "
                "trying several rates would cost several full runs")
    if not get_template(run.plan.kind, run.plan.template).has(PARAM):
        return f"{run.plan.template} has no {PARAM}"
    return None


def grid(run: Run) -> list[float]:
    """The candidates within the template's bounds for ``lrate``."""
    spec = get_template(run.plan.kind, run.plan.template).param(PARAM)
    lo = -math.inf if spec.min is None else float(spec.min)
    hi = math.inf if spec.max is None else float(spec.max)
    return [v for v in LRATE_GRID if lo <= v <= hi]


def validation_fold(labels: np.ndarray, seed: int, share: float = VAL_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) positions into ``labels``: ``share`` of each label's items held out (rounded, at least one
    where a label has two or more items; a label seen once stays in the fit part), drawn with ``seed``."""
    rng = np.random.default_rng([int(seed), 31337])
    held: list[int] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) < 2:
            continue
        k = min(len(idx) - 1, max(1, int(round(share * len(idx)))))
        held.extend(rng.permutation(idx)[:k].tolist())
    held_arr = np.array(sorted(held), dtype=np.int64)
    fit = np.setdiff1d(np.arange(len(labels)), held_arr)
    return fit, held_arr


def tune_head(run: Run) -> dict[str, Any] | None:
    """Pick ``lrate`` for this run's head from ``grid(run)`` on a held-out fold; None when the fold is too small.

    Returns ``{"param", "chosen", "grid", "candidates": [{"lrate", "val_loss", "val_top1"}], "fit_items",
    "val_items", "seconds"}``. The network's head is back at its initial weights afterwards.
    """
    plan, mode, cb = run.plan, run.mode, run.cb
    t0 = time.perf_counter()
    rows = mode.train_rows
    fit, held = validation_fold(mode.single_train[rows], plan.seed)
    if len(held) < MIN_VAL_ITEMS:
        cb.log(f"head tuning skipped: {len(held)} held-out images (at least {MIN_VAL_ITEMS} needed); "
               f"{PARAM} {plan.params[PARAM]} as set")
        return None
    fit_rows, held_rows = rows[fit], rows[held]
    candidates = grid(run)
    cb.log(f"head tuning: {PARAM} from {_fmt_grid(candidates)}, each trained {run.num_epochs} epochs on "
           f"{len(fit_rows)} images and compared on {len(held_rows)} held out")
    initial = _trainable_state(run.net)
    results = []
    with _rng_kept():
        for i, lrate in enumerate(candidates):
            val_loss, val_top1 = _try(run, lrate, fit_rows, held_rows, i, len(candidates))
            results.append({PARAM: lrate, "val_loss": val_loss, "val_top1": val_top1})
            cb.log(f"head tuning: {PARAM} {lrate:g}: held-out loss {val_loss:.4f}, top-1 {val_top1:.4f}")
            _restore(run.net, initial)
    finite = [r for r in results if math.isfinite(r["val_loss"])]
    if not finite:
        cb.log(f"head tuning: every candidate diverged; {PARAM} {plan.params[PARAM]} as set")
        return None
    chosen = min(finite, key=lambda r: (r["val_loss"], r[PARAM]))[PARAM]
    seconds = time.perf_counter() - t0
    cb.log(f"head tuned: {PARAM} {chosen:g} of {_fmt_grid(candidates)} ({seconds:.1f} s)")
    return {"param": PARAM, "chosen": chosen, "grid": candidates, "candidates": results,
            "fit_items": int(len(fit_rows)), "val_items": int(len(held_rows)), "seconds": round(seconds, 3)}


def apply_tuning(run: Run, tuned: dict[str, Any]) -> None:
    """Train the run with the tuned rate: its schedule rebuilt from the parameters with ``lrate`` replaced."""
    params = {**run.plan.params, tuned["param"]: tuned["chosen"]}
    run.schedule = make_schedule(run.plan.kind, run.plan.template, params, run.steps_per_epoch)


def describe(tuned: dict[str, Any] | None) -> str:
    """One line for people: "head tuned: lrate 0.01 of {0.003, 0.01, 0.03, 0.1}" ("" when not tuned)."""
    if not tuned:
        return ""
    return f"head tuned: {tuned['param']} {tuned['chosen']:g} of {_fmt_grid(tuned['grid'])}"


def _fmt_grid(values: list[float]) -> str:
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"


def _try(run: Run, lrate: float, fit_rows: np.ndarray, held_rows: np.ndarray, index: int,
         count: int) -> tuple[float, float]:
    """Train the head at ``lrate`` on ``fit_rows`` for the run's epochs; (loss, top-1) on ``held_rows``."""
    plan, mode, cb, net = run.plan, run.mode, run.cb, run.net
    params = {**plan.params, PARAM: lrate}
    items = run.items_per_epoch * len(fit_rows) // max(len(mode.train_rows), 1) or len(fit_rows)
    spe = tdata.steps_per_epoch(items, run.batch_size)
    schedule = make_schedule(plan.kind, plan.template, params, spe)
    opt = make_optimizer(plan.optimizer, params, net, frozen_backbone=True)
    net.train()
    step_no = 0
    for epoch in range(1, run.num_epochs + 1):
        if cb.should_stop():
            raise StopRequested()
        order = fit_rows[tdata.epoch_order(len(fit_rows), items, plan.seed + 1 + index, epoch)]
        for step, rows in tdata.batches(order, run.batch_size):
            set_lr(opt, float(schedule(step_no)))
            seed = tdata.step_seed(plan.seed + 1 + index, epoch, step)
            loss = mode.step(Batch(step, rows, None), torch.Generator().manual_seed(seed))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_no += 1
            if not math.isfinite(float(loss.detach())):
                return math.inf, 0.0
        cb.on_step({"epoch": 0, "step": index * run.num_epochs + epoch, "steps_per_epoch": count * run.num_epochs,
                    "loss": float("nan"), "lr": lrate, "images_per_sec": 0.0, "eta_s": 0.0, "phase": "tuning"})
    return _held_out(run, held_rows)


@torch.inference_mode()
def _held_out(run: Run, rows: np.ndarray) -> tuple[float, float]:
    """The mode's loss and top-1 on these training rows (features of the original images, no flips)."""
    mode = run.mode
    assert isinstance(mode, FeaturesMode)  # tuning_applies: only a frozen backbone's cached features are tried
    net = mode.net
    net.eval()
    try:
        f = run.rt.tensor(np.ascontiguousarray(mode.features["orig"][rows]))
        with run.rt.autocast():
            out = net.head_from_features(f).float()
        multi = run.rt.tensor(mode.multi_train[rows])
        single = run.rt.tensor(mode.single_train[rows])
        loss = float(mode.loss_fn(out, multi, single))
        top1 = float((multi.gather(1, out.argmax(1, keepdim=True)) > 0).float().mean())
    finally:
        net.train()
    return (loss if math.isfinite(loss) else math.inf), top1


def _trainable_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}


def _restore(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n in state:
                p.copy_(state[n])


@contextmanager
def _rng_kept() -> Iterator[None]:
    """torch's global random state as it was before the block: the real run draws what an untuned run draws."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)
