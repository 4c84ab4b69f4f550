"""The loop: epochs from the checkpoint's position, steps within them, a checkpoint and a metrics row per epoch.

It asks the run's mode for batches, steps and evaluation, and never which mode it is.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import torch

from core import csvsafe
from core.training import data as tdata
from core.training.build import Run
from core.training.checkpoint import atomic_write_bytes, save_checkpoint
from core.training.modes import Batch
from core.training.state import TrainingDiverged, TrainState


def run_epochs(run: Run, state: TrainState) -> bool:
    """Epochs from the checkpoint's position to num_epochs; True when stopped by the callbacks."""
    plan, cb, mode = run.plan, run.cb, run.mode
    selection = selection_metric(plan.kind)
    patience = plan.options["early_stopping_patience"]
    run.net.train()
    with cpu_threads(mode.train_threads()):
        while state.epoch_done < run.num_epochs:
            epoch = state.epoch_done + 1
            order = mode.train_rows[tdata.epoch_order(len(mode.train_rows), run.items_per_epoch, plan.seed, epoch)]
            t_epoch = time.perf_counter()
            if run.head_fitted:  # fitted before the loop (core.training.tuning): the epoch evaluates and saves
                loss = state.loss_sum / max(state.loss_n, 1)
                cb.on_step({"epoch": epoch, "step": 1, "steps_per_epoch": 1, "loss": loss, "lr": 0.0,
                            "images_per_sec": 0.0, "eta_s": 0.0, "phase": "fitted"})
            else:
                with closing(mode.batches(order, state.step_in_epoch)) as batches:
                    if _epoch_steps(run, state, epoch, batches, t_epoch):
                        return True
            train_wall = state.epoch_seconds + (time.perf_counter() - t_epoch)  # this epoch's training, all sessions
            metrics = {"train_loss": state.loss_sum / max(state.loss_n, 1)}
            metrics.update(mode.evaluate(epoch))
            metrics["lr"] = run.lr(max(state.global_step - 1, 0))
            metrics["images_per_sec"] = state.epoch_images / max(train_wall, 1e-9)
            metrics["epoch_seconds"] = state.epoch_seconds + (time.perf_counter() - t_epoch)
            state.train_seconds += time.perf_counter() - t_epoch
            state.history.append({"epoch": epoch, **metrics})
            state.epoch_done = epoch
            state.start_epoch_sums()
            value = metrics.get(selection)
            is_best = better(selection, value, (state.best or {}).get("value"))
            if is_best:
                state.best = {"epoch": epoch, "metric": selection, "value": value}
                state.bad_epochs = 0
            elif value is not None:
                state.bad_epochs += 1
            save(run, state, best=is_best)
            from core.store import models as mstore

            mstore.add_epoch_metrics(plan.run, epoch, metrics)
            cb.on_epoch(epoch, metrics)
            if patience is not None and state.bad_epochs >= patience:
                cb.log(f"early stopping: {selection} did not improve for {patience} epochs (best: epoch "
                       f"{(state.best or {}).get('epoch')})")
                break
    return False


def _epoch_steps(run: Run, state: TrainState, epoch: int, batches: Iterator[Batch], t_epoch: float) -> bool:
    """The optimiser steps of one epoch (from the checkpoint's step); True when stopped by the callbacks."""
    plan, cb, mode, policy, opt = run.plan, run.cb, run.mode, run.policy, run.opt
    step_times: list[float] = []
    for batch in batches:
        if cb.should_stop():
            state.epoch_seconds += time.perf_counter() - t_epoch
            state.train_seconds += time.perf_counter() - t_epoch
            save(run, state, best=False)
            return True
        t0 = time.perf_counter()
        seed = tdata.step_seed(plan.seed, epoch, batch.step)
        torch.manual_seed(seed)
        lr = run.lr(state.global_step)
        run.set_lr(lr)
        snapshot = policy.snapshot()
        loss = mode.step(batch, torch.Generator().manual_seed(seed))
        opt.zero_grad(set_to_none=True)

        def redo(batch: Batch = batch, seed: int = seed) -> torch.Tensor:
            torch.manual_seed(seed)  # the same step again, eagerly, with the same random draws
            return mode.step(batch, torch.Generator().manual_seed(seed))

        loss = policy.backward(loss, snapshot, lambda: opt.zero_grad(set_to_none=True), redo)
        if mode.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], mode.clip_grad_norm)
        opt.step()
        # read the loss once the whole step is queued: on a GPU reading it earlier would make the CPU wait for the
        # forward pass before it could queue the backward's kernels. A non-finite loss has then updated the weights
        # in memory, but nothing is saved after it: the run stops and the last good checkpoint stays.
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"training stopped at epoch {epoch}, step {batch.step + 1}: the loss became {value} (not a finite "
                f"number) at learning rate {lr:.3g}. Lower the learning rate (per_item_lrate / lrate / "
                f"per_128_lrate) and start a new run; the last good checkpoint (epoch {state.epoch_done}) "
                "is kept."
            )
        dt = time.perf_counter() - t0
        n = len(batch.rows)
        state.global_step += 1
        state.step_in_epoch = batch.step + 1
        state.loss_sum += value * n
        state.loss_n += n
        state.epoch_images += n
        remaining = (run.num_epochs - epoch) * run.steps_per_epoch + (run.steps_per_epoch - batch.step - 1)
        policy.after_step(remaining, step_times, dt)
        recent = step_times[-20:] or [dt]
        ips = n / max(sum(recent) / len(recent), 1e-9)
        cb.on_step({"epoch": epoch, "step": batch.step + 1, "steps_per_epoch": run.steps_per_epoch,
                    "images_per_sec": ips, "loss": value, "lr": lr,
                    "eta_s": remaining * (sum(recent) / len(recent)), "phase": "train"})
    return False


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def save(run: Run, state: TrainState, best: bool) -> None:
    """The checkpoint (the mode's frozen part left out) and metrics.csv."""
    save_checkpoint(run.ckpt_dir, run.net, run.opt, state.to_json(), best=best,
                    frozen_prefixes=run.mode.frozen_prefixes())
    write_metrics_csv(run.run_dir / "metrics.csv", state.history)


def better(metric: str, new: float | None, old: float | None) -> bool:
    if new is None or (isinstance(new, float) and not math.isfinite(new)):
        return False
    if old is None:
        return True
    return new < old if metric == "val_loss" else new > old


def selection_metric(kind: str) -> str:
    """The metric that picks the best epoch (and early stopping watches)."""
    return {"embedder": "recall_at_1", "detector": "map"}.get(kind, "top1")


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    cols: list[str] = []
    for h in history:
        for k in h:
            if k not in cols:
                cols.append(k)
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\r\n")  # no cell a spreadsheet would run (core.csvsafe)
    w.writerow(cols)
    for h in history:
        w.writerow(["" if h.get(k) is None else h.get(k) for k in cols])
    atomic_write_bytes(path, buf.getvalue().encode())
