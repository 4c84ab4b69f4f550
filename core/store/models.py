"""Trained models and their per-epoch metrics: the only code that reads or writes the models and epoch_metrics tables.

A model row points at its folder (``path``), loadable with ``core.models.io.load_model_dir``; ``run`` names the
training run whose epochs are in ``epoch_metrics``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa

from core import paths
from core.errors import UserError
from core.records import ModelRow
from core.store import access
from core.store.engine import inserted_id, now, read, transaction
from core.store.schema import epoch_metrics, models
from core.users import NotFound, User


def _row(r: Any) -> ModelRow:
    return cast(ModelRow, dict(r._mapping))


def _clean(metrics: dict) -> dict:
    """JSON-safe metrics: numpy scalars to floats, non-finite values to None (JSON has no NaN)."""
    out: dict = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def name_taken(owner: str, name: str) -> bool:
    """Whether ``owner`` already has a model called ``name``."""
    with read() as conn:
        hit = conn.execute(sa.select(models.c.id).where(models.c.owner == owner, models.c.name == name)).first()
    return hit is not None


def unique_name(owner: str, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever the owner does not have yet."""
    with read() as conn:
        taken = set(conn.execute(sa.select(models.c.name).where(models.c.owner == owner)).scalars())
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def register_model(
    *,
    owner: str,
    name: str,
    kind: str,
    template: str,
    params: dict,
    concepts: list[str],
    preprocess: dict,
    path: str | Path,
    dataset_id: int | None = None,
    dataset_version: int | None = None,
    metrics: dict | None = None,
    train_seconds: float | None = None,
    run: str | None = None,
    base_model_id: int | None = None,
) -> int:
    """Store a trained model's row and return its id. A name the owner already uses is refused (UserError)."""
    if not name or not name.strip():
        raise UserError("model name: must not be empty")
    with transaction() as conn:
        dup = conn.execute(sa.select(models.c.id).where(models.c.owner == owner, models.c.name == name)).first()
        if dup is not None:
            raise UserError(f"model name {name!r}: already used by model {dup[0]}; choose another name")
        res = conn.execute(
            models.insert().values(
                owner=owner, name=name, kind=kind, template=template, dataset_id=dataset_id,
                dataset_version=dataset_version, params=params, concepts=list(concepts), preprocess=preprocess,
                metrics=_clean(metrics or {}), path=str(path), train_seconds=train_seconds, run=run,
                base_model_id=base_model_id, created_at=now(),
            )
        )
        return inserted_id(res)


def get_model_by_id(model_id: int) -> ModelRow:
    """The model row with this id (UserError if there is none)."""
    with read() as conn:
        r = conn.execute(sa.select(models).where(models.c.id == int(model_id))).first()
    if r is None:
        raise NotFound(f"model {model_id}: no such model")
    return _row(r)


def get_model(user: User | str, ref: str | int) -> ModelRow:
    """The model ``ref`` (a name, ``owner/name`` or an id) that ``user`` sees; NotFound listing the visible ones
    otherwise (a model the user may not see answers like a missing one)."""
    with read() as conn:
        r = access.lookup(conn, models, user, ref)
        if r is None:
            names = access.visible_names(conn, models, user)
    if r is None:
        have = ", ".join(names) if names else "none yet"
        raise NotFound(f"model {ref!r}: not found; models: {have}")
    return _row(r)


def list_models(user: User | str | None = None, kind: str | None = None) -> list[ModelRow]:
    """The models ``user`` sees (every model with None: the services' and workers' view), newest first, optionally
    of one kind."""
    q = sa.select(models).order_by(models.c.id.desc())
    if user is not None:
        q = q.where(access.visible(models, user))
    if kind is not None:
        q = q.where(models.c.kind == kind)
    with read() as conn:
        return [_row(r) for r in conn.execute(q)]


def set_visibility(model_id: int, visibility: str) -> None:
    with transaction() as conn:
        conn.execute(models.update().where(models.c.id == int(model_id)).values(visibility=visibility))


def delete_model(model_id: int) -> None:
    """Delete the model's row, its epoch metrics and its folder (when the folder is under the data directory)."""
    row = get_model_by_id(model_id)
    with transaction() as conn:
        conn.execute(models.delete().where(models.c.id == row["id"]))
        if row.get("run"):
            conn.execute(epoch_metrics.delete().where(epoch_metrics.c.run == row["run"]))
    folder = Path(row["path"]).resolve()
    if folder.is_dir() and paths.home() in folder.parents:
        shutil.rmtree(folder, ignore_errors=True)


def add_epoch_metrics(run: str, epoch: int, metrics: dict) -> None:
    """Record (or replace, after a resume) one epoch's metrics for a run."""
    clean = _clean(metrics)
    with transaction() as conn:
        conn.execute(epoch_metrics.delete().where(epoch_metrics.c.run == str(run), epoch_metrics.c.epoch == epoch))
        conn.execute(epoch_metrics.insert().values(run=str(run), epoch=int(epoch), metrics=clean))


def get_epoch_metrics(run: str) -> list[dict]:
    """Every recorded epoch of a run, in order: ``[{"epoch": 1, **metrics}, ...]``."""
    q = sa.select(epoch_metrics).where(epoch_metrics.c.run == str(run)).order_by(epoch_metrics.c.epoch)
    with read() as conn:
        return [{"epoch": r.epoch, **(r.metrics or {})} for r in conn.execute(q)]


def delete_epoch_metrics(run: str, after_epoch: int = 0) -> None:
    """Forget a run's epochs past ``after_epoch`` (a resume from an earlier checkpoint redoes them)."""
    with transaction() as conn:
        conn.execute(epoch_metrics.delete().where(epoch_metrics.c.run == str(run), epoch_metrics.c.epoch > after_epoch))
