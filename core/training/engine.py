"""``train(config, run_dir, callbacks, resume)``: any catalog template on a stored dataset version, on CUDA when
present, else on every CPU core.

It validates the configuration with the catalog (``plan``: a crafted request cannot pass the UI's bounds), builds
the template's network, optimiser and way of training (``build``, ``modes``), resumes from the run's checkpoint or
starts afresh, runs the epochs (``loop``: a crash-safe checkpoint every epoch and when asked to stop, per-epoch
metrics) and registers the finished model (``register``).

Three ways through the data (``core.training.modes``), decided once by ``modes.mode_for``:
- ``images``: the full network on cached pixels with on-the-fly augmentation.
- ``features``: a frozen backbone (base_gradient_multiplier 0 on a transfer template, or a base model): backbone
  features are computed once per (dataset version, weights, image size, flips) and cached on disk, and only the head
  trains, in seconds.
- ``detector``: torchvision detection models on cached pixels with boxes, horizontal flips move the boxes too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from core.errors import UserError
from core.training.build import Run, build_run
from core.training.callbacks import Callbacks
from core.training.checkpoint import load_checkpoint, read_state
from core.training.loop import cpu_threads, run_epochs
from core.training.plan import Plan, make_plan
from core.training.register import register
from core.training.state import StopRequested, TrainResult, TrainState


def train(config: dict, run_dir: Path | str, callbacks: Callbacks | None = None, resume: bool = False) -> TrainResult:
    """Train ``config`` in this process, checkpointing under ``run_dir``; see the module docstring.

    Args:
        config: {"owner", "dataset" (name), "kind", "template", "params" (raw; validated here), "name" (model name,
            optional), "seed", "base_model" (optional: a trained embedder's id/name, or ``core.models.GENERAL``),
            "run" (the key of the per-epoch metrics; default: run_dir's name), "options"
            ({"early_stopping_patience", "restore_best", "compile"}, optional)}.
        run_dir: the run's folder: checkpoints, metrics.csv.
        callbacks: progress, logging and the stop request (``Callbacks`` no-ops when None).
        resume: continue from the last checkpoint in run_dir (a larger num_epochs extends a finished run).

    Returns:
        TrainResult; ``stopped`` True with ``model_id`` None when ``callbacks.should_stop()`` ended the run early.

    Raises:
        UserError: invalid configuration, unknown dataset, no data; TrainingDiverged on a non-finite loss; GPU out of
            memory (the message suggests a smaller batch or image size).
    """
    cb = callbacks or Callbacks()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(config, run_dir)
    try:
        run = build_run(plan, run_dir, cb)
    except torch.OutOfMemoryError as exc:
        raise UserError(f"out of GPU memory placing {plan.template} on the GPU: another process may hold its memory "
                        "(nvidia-smi lists them); try again when it is free") from exc

    state = _resume(run, cb) if resume else None
    if isinstance(state, TrainResult):
        return state
    if state is None:
        if resume:
            cb.log("resume: no checkpoint yet; starting from the beginning")
        state = _fresh(run)
    state.identity = plan.config_identity()
    why_not_tuned = _head_plan(run, state)
    state.num_epochs = run.num_epochs
    state.model_name = plan.name

    rt = run.rt
    numerics = ("bf16 autocast" if rt.amp else "fp32") + (", channels_last" if rt.channels_last else "")
    cb.on_start({"kind": plan.kind, "template": plan.template, "params": plan.params, "device": str(rt.device),
                 "numerics": numerics,
                 "items": len(run.mode.train_rows), "val_items": len(plan.eval_records), "eval_split": plan.eval_split,
                 "steps_per_epoch": run.steps_per_epoch, "epochs": run.num_epochs,
                 "start_epoch": state.epoch_done + 1, "mode": run.mode.name, "concepts": plan.concepts,
                 "batch_size": run.batch_size})
    try:
        run.mode.prepare()  # all cores: decoding, or the backbone's forward passes
        _tune(run, state, cb, why_not_tuned)
        stopped = run_epochs(run, state)
    except StopRequested:
        stopped = True
    except torch.OutOfMemoryError as exc:
        if rt.cuda:
            torch.cuda.empty_cache()
        raise UserError(
            f"out of GPU memory training {plan.template} with batch_size {run.batch_size} at image_size "
            f"{run.preprocess['image_size']}: choose a smaller batch_size or image_size and start a new run; the last "
            f"checkpoint (epoch {state.epoch_done}) is kept"
        ) from exc
    if stopped:
        cb.log(f"stopped after epoch {state.epoch_done}, step {state.step_in_epoch}; checkpoint saved")
        return TrainResult(None, state.history[-1] if state.history else {}, True, state.epoch_done,
                           history=state.history, train_seconds=state.train_seconds)
    return register(run, state)


def _head_plan(run: Run, state: TrainState) -> str | None:
    """Before the run starts: why its head will not tune itself (None: it will). A head that will be fitted
    (``core.training.tuning.fits_head``) makes the run one epoch without steps, so the job says 1 epoch from its start;
    a resume gets its tuned rate or fitted head back."""
    from core.training import tuning

    if state.tuned is not None:
        tuning.apply_tuning(run, state.tuned)
        return "tuned before"
    if state.global_step or state.epoch_done:
        return "resumed without tuning"
    why_not = tuning.tuning_applies(run)
    if why_not is None and tuning.fits_head(run):
        tuning.apply_tuning(run, {"method": tuning.LOGISTIC})
    return why_not


def _tune(run: Run, state: TrainState, cb: Callbacks, why_not: str | None) -> None:
    """The head fitted, or its rate tuned on a held-out fold, before the first step (``tune_head``, when ``_head_plan``
    said it applies)."""
    from core.training import tuning

    if why_not is None:
        with cpu_threads(run.mode.train_threads()):
            state.tuned = tuning.tune(run)
        if state.tuned is not None:
            tuning.apply_tuning(run, state.tuned)
        if run.head_fitted and state.tuned is not None:  # the fit is the one epoch's training
            state.loss_sum, state.loss_n = float(state.tuned["train_loss"]), 1
            state.epoch_seconds = float(state.tuned["seconds"])
            state.train_seconds += float(state.tuned["seconds"])
    elif why_not not in ("off", "tuned before", "resumed without tuning"):
        cb.log(f"head tuning skipped: {why_not}")


def _fresh(run: Run) -> TrainState:
    """A new run: no checkpoint, no per-epoch metrics left from an earlier run under this key."""
    from core.store import models as mstore

    shutil.rmtree(run.ckpt_dir, ignore_errors=True)
    mstore.delete_epoch_metrics(run.plan.run, after_epoch=0)
    return TrainState()


def _resume(run: Run, cb: Callbacks) -> TrainState | TrainResult | None:
    """The checkpoint's state, its weights and optimiser loaded into the run; the stored model's result when the run
    had already finished (and its model still exists); None when there is no checkpoint."""
    from core.store import models as mstore

    plan = run.plan
    prev = read_state(run.ckpt_dir)
    if prev is None:
        return None
    _check_same_run(plan, prev.get("identity") or {})
    state = TrainState.from_checkpoint(load_checkpoint(run.ckpt_dir, run.net, run.opt))
    if int(plan.params["num_epochs"]) < state.epoch_done:
        raise UserError(f"num_epochs: {plan.params['num_epochs']} is below the {state.epoch_done} epochs "
                        "already done; to extend, give a larger num_epochs")
    if state.finished and state.model_id and state.epoch_done >= int(plan.params["num_epochs"]):
        try:
            row = mstore.get_model_by_id(state.model_id)
            cb.log(f"run already finished: model {row['id']} ({row['name']})")
            return TrainResult(row["id"], row["metrics"] or {}, False, state.epoch_done, row["path"],
                               state.history, state.train_seconds)
        except UserError:
            pass  # its model was deleted: register it again
    state.finished, state.model_id = False, None
    mstore.delete_epoch_metrics(plan.run, after_epoch=state.epoch_done)
    cb.log(f"resuming after epoch {state.epoch_done}" + (f", step {state.step_in_epoch}"
                                                         if state.step_in_epoch else ""))
    return state


def _check_same_run(plan: Plan, before: dict) -> None:
    """A resume must train what the checkpoint trained (only num_epochs may change)."""
    now = json.loads(json.dumps(plan.config_identity()))
    if before.get("dataset_version") != now["dataset_version"] and before.get("dataset_id") == now["dataset_id"]:
        raise UserError(f"resume: dataset {plan.dataset['name']!r} changed since this run started (version "
                        f"{before.get('dataset_version')} -> {now['dataset_version']}); start a new run")
    if before != now:
        changed = sorted(k for k in now if before.get(k) != now[k])
        raise UserError(f"resume: the configuration differs from the checkpoint's ({', '.join(changed)}; only "
                        "num_epochs may change); start a new run instead")
