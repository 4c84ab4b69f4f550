"""What a job of each type runs, and how its configuration is checked before it is queued and again before it runs.

A runner is ``fn(config, run_dir, callbacks, resume) -> dict`` (the result: ``{"model_id"}`` or ``{"index_id"}``,
plus ``"stopped"`` when it stopped early on ``callbacks.should_stop()``). The built-in runners import their engines
inside the function, so that queueing a job (from a page or the CLI) never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import UserError, ValidationError
from core.models import GENERAL

Runner = Callable[[dict, Path, Any, bool], dict]
Validator = Callable[[str, dict], dict]

_runners: dict[str, Runner] = {}
_validators: dict[str, Validator] = {}


def register(job_type: str, fn: Runner, validate: Validator | None = None) -> None:
    """Register (or replace) the runner of ``job_type`` and, optionally, its configuration check."""
    _runners[job_type] = fn
    if validate is not None:
        _validators[job_type] = validate


def job_types() -> list[str]:
    return sorted(_runners)


def get(job_type: str) -> Runner:
    try:
        return _runners[job_type]
    except KeyError:
        raise UserError(f"Unknown job type {job_type!r}; available: {', '.join(job_types())}") from None


def validate(job_type: str, owner: str, config: dict) -> dict:
    """The checked, completed configuration of a job; raises UserError/ValidationError naming the bad field."""
    get(job_type)
    if not isinstance(config, dict):
        raise ValidationError(f"A job configuration must be a JSON object, got {type(config).__name__}")
    check = _validators.get(job_type)
    return check(owner, dict(config)) if check else {**config, "owner": owner}


def _require(config: dict, *keys: str) -> None:
    missing = [k for k in keys if config.get(k) in (None, "")]
    if missing:
        raise ValidationError(f"The job configuration lacks {', '.join(missing)}")


def _dataset_ref(owner: str, dataset: str | int) -> str:
    """The dataset a job of ``owner`` uses, checked visible now and named so that the worker finds the same one:
    the owner's own by name, a team dataset of someone else as ``owner/name``."""
    from core.store import datasets

    ds = datasets.get_dataset(owner, dataset)
    return ds["name"] if ds["owner"] == owner else f"{ds['owner']}/{ds['name']}"


# ---------------------------------------------------------------- train


def _validate_train(owner: str, config: dict) -> dict:
    """Template and hyperparameters within the spec's bounds, and a dataset the owner has."""
    from core.templates import validate as validate_params

    _require(config, "dataset", "kind", "template")
    params = config.get("params") or {}
    if not isinstance(params, dict):
        raise ValidationError(f"params must be an object of hyperparameters, got {type(params).__name__}")
    config["params"] = validate_params(config["kind"], config["template"], params)
    if config.get("options"):
        from core.training.plan import training_options

        training_options(config["options"])  # early_stopping_patience, restore_best, compile: refused here, at once
    config["dataset"] = _dataset_ref(owner, config["dataset"])
    try:
        config["seed"] = int(config.get("seed", 0) or 0)
    except (TypeError, ValueError):
        raise ValidationError(f"seed must be an integer, got {config.get('seed')!r}") from None
    config["owner"] = owner
    return config


def _run_train(config: dict, run_dir: Path, callbacks: Any, resume: bool) -> dict:
    from core.training import train

    res = train(config, run_dir, callbacks=callbacks, resume=resume)
    return {"model_id": res.model_id, "metrics": res.metrics, "stopped": bool(res.stopped),
            "epochs_done": res.epochs_done}


# ---------------------------------------------------------------- index


def _validate_index(owner: str, config: dict) -> dict:
    _require(config, "dataset")
    config["dataset"] = _dataset_ref(owner, config["dataset"])
    config.setdefault("model", GENERAL)
    config["owner"] = owner
    return config


def _run_index(config: dict, run_dir: Path, callbacks: Any, resume: bool) -> dict:
    from core.search.service import build_index

    return dict(build_index(config, run_dir, callbacks, resume=resume))


# ---------------------------------------------------------------- quality


def _validate_quality(owner: str, config: dict) -> dict:
    from core.search.embed import resolve_model

    _require(config, "dataset")
    config["dataset"] = _dataset_ref(owner, config["dataset"])
    config["model"] = str(config.get("model") or GENERAL)
    resolve_model(owner, config["model"])  # an unknown model or a detector is refused before it is queued
    config["owner"] = owner
    return config


def _run_quality(config: dict, run_dir: Path, callbacks: Any, resume: bool) -> dict:
    from core.data.quality import run_quality

    return run_quality(config, run_dir, callbacks, resume)


def _run_map(config: dict, run_dir: Path, callbacks: Any, resume: bool) -> dict:
    from core.data.atlas import run_map

    return run_map(config, run_dir, callbacks, resume)


register("train", _run_train, _validate_train)
register("index", _run_index, _validate_index)
register("quality", _run_quality, _validate_quality)
register("map", _run_map, _validate_quality)
