"""The end of a run: the final model folder (weights, config, concepts, preprocessing, metrics.csv), registered."""

from __future__ import annotations

import shutil
import time

import torch

from core import paths
from core.models import GENERAL
from core.training.build import Run
from core.training.checkpoint import BEST, load_checkpoint, read_state, update_state
from core.training.plan import Plan
from core.training.state import TrainResult, TrainState


def register(run: Run, state: TrainState) -> TrainResult:
    """Save the final model (the best epoch's weights when restore_best) and register it under the plan's name (or a
    unique one made from the template and dataset)."""
    from core.models.io import save_model_dir
    from core.store import models as mstore

    plan = run.plan
    final_epoch = state.epoch_done
    if plan.options["restore_best"] and state.best and read_state(run.ckpt_dir, BEST):
        best_state = load_checkpoint(run.ckpt_dir, run.net, None, which=BEST)
        final_epoch = best_state["epoch_done"]
    metrics = dict(next((h for h in state.history if h["epoch"] == final_epoch), {}))
    metrics.pop("epoch", None)
    metrics.update(epoch=final_epoch, epochs=state.epoch_done)
    if state.tuned:
        metrics[f"tuned_{state.tuned['param']}"] = state.tuned["chosen"]
    name = plan.name or mstore.unique_name(plan.owner, f"{plan.template}-{plan.dataset['name']}")
    if mstore.name_taken(plan.owner, name):
        name = mstore.unique_name(plan.owner, name)
    folder = paths.subdir("models") / f"{_slug(plan.owner)}-{_slug(name)}-{time.time_ns()}"
    run.net.eval()
    net = run.net.to(memory_format=torch.contiguous_format).to("cpu")
    meta = {
        "kind": plan.kind, "template": plan.template, "params": plan.params, "concepts": plan.concepts,
        "preprocess": run.preprocess, "dataset_id": plan.dataset["id"], "dataset_version": plan.dataset["version"],
        "dataset": plan.dataset["name"], "metrics": metrics, "seed": plan.seed, "owner": plan.owner, "name": name,
        "base_model": _base_meta(plan), "train_seconds": state.train_seconds, "run": plan.run,
        "head_tuning": state.tuned,
    }
    if run.base_desc is not None:
        meta["base"] = run.base_desc
    save_model_dir(folder, net, meta)
    shutil.copy(run.run_dir / "metrics.csv", folder / "metrics.csv")
    base_id = plan.base_model["id"] if plan.base_model else None
    try:
        model_id = mstore.register_model(
            owner=plan.owner, name=name, kind=plan.kind, template=plan.template, params=plan.params,
            concepts=plan.concepts, preprocess=run.preprocess, path=folder, dataset_id=plan.dataset["id"],
            dataset_version=plan.dataset["version"], metrics=metrics, train_seconds=state.train_seconds,
            run=plan.run, base_model_id=None if base_id == GENERAL else base_id,
        )
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    state.finished = True
    state.model_id = model_id
    update_state(run.ckpt_dir, finished=True, model_id=model_id, model_name=name)
    run.cb.log(f"model {model_id} ({name}) stored in {folder}")
    return TrainResult(model_id, metrics, False, state.epoch_done, str(folder), state.history, state.train_seconds)


def _base_meta(plan: Plan) -> dict | None:
    if plan.base_model is None:
        return None
    return {"id": plan.base_model["id"], "name": plan.base_model.get("name"), "path": plan.base_model.get("path")}


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))[:60]
