"""The embedding map of a dataset: every image as a point in 2-D, PCA at once, UMAP (``umap-learn``) as a job.

The map is drawn from the embeddings the quality check caches per dataset version and embedder
(``core.data.quality.embeddings``): PCA is computed on first view and saved beside them (``map-pca.npz``), UMAP by the
"map" job (``map-umap.npz``), which also embeds the images when nothing is cached yet. A browser draws at most
``MAX_DRAWN`` points (a seeded sample); a box or lasso drawn on them selects among all points
(:func:`select_region`), so a selection at 100,000 images is the same gesture as at 1,000.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from core.data import quality
from core.errors import UserError
from core.fsutil import atomic_path, open_write
from core.models import GENERAL
from core.search import embed as embedding
from core.store import datasets as ds_store
from core.users import User

MAP_METHODS = ("pca", "umap")
MAX_DRAWN = 20_000  # points sent to the browser at most (WebGL scatter); selections apply to all points
UMAP_NEIGHBOURS = 15


class DatasetMap(TypedDict):
    """The 2-D map of the dataset's images as they are now: ``ids`` (int64), ``xy`` (float32, one row each), their
    first concept ("(none)" when unlabelled) and split, in the same order."""

    method: str
    version: int  # the dataset version whose embeddings were mapped
    ids: np.ndarray
    xy: np.ndarray
    concept: list[str]
    split: list[str]


def _map_file(folder: Path, method: str) -> Path:
    return folder / f"map-{method}.npz"


def _save(path: Path, ids: np.ndarray, xy: np.ndarray) -> None:
    with atomic_path(path, what=f"dataset map {path.name}") as tmp, open_write(tmp) as fh:
        np.savez(fh, ids=ids, xy=xy.astype(np.float32))


def pca_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """The first two principal components of the vectors (scikit-learn, randomised SVD past a few thousand)."""
    from sklearn.decomposition import PCA

    if len(vectors) < 3:
        return np.zeros((len(vectors), 2), np.float32)
    return PCA(n_components=2, random_state=seed).fit_transform(vectors).astype(np.float32)


def umap_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """UMAP of the vectors to 2-D with cosine distance (``umap-learn``); UserError when it is not installed."""
    try:
        import umap
    except ImportError:
        raise UserError("umap-learn is not installed on this server; the PCA map is shown instead") from None
    if len(vectors) < 4:
        return pca_2d(vectors, seed)
    reducer = umap.UMAP(n_components=2, n_neighbors=min(UMAP_NEIGHBOURS, len(vectors) - 1), metric="cosine",
                        random_state=seed)
    return np.asarray(reducer.fit_transform(vectors), np.float32)


def dataset_map(user: User | str, dataset: str | int, model: str | int = GENERAL,
                method: str = "pca") -> DatasetMap | None:
    """The dataset's map from its newest cached embeddings with this model: PCA computed now when missing, UMAP only
    once the map job has made it. None when nothing is embedded yet (or, for UMAP, not mapped yet)."""
    if method not in MAP_METHODS:
        raise UserError(f"Unknown map method {method!r}; available: {', '.join(MAP_METHODS)}")
    ds = ds_store.get_dataset(user, dataset)
    key, _row = embedding.resolve_model(user, model)
    cached = quality.newest_cache(ds, key)
    if cached is None:
        return None
    version, folder = cached
    path = _map_file(folder, method)
    try:
        with np.load(path, allow_pickle=False) as z:
            ids, xy = z["ids"].astype(np.int64), z["xy"].astype(np.float32)
    except (OSError, ValueError, KeyError):
        if method != "pca":
            return None
        ids, vectors = quality.load_cached(folder)
        xy = pca_2d(vectors)
        _save(path, ids, xy)
    records = {r["item_id"]: r for r in ds_store.dataset_records(ds["id"])}
    keep = np.array([int(i) in records for i in ids], bool)
    ids, xy = ids[keep], xy[keep]
    return {"method": method, "version": version, "ids": ids, "xy": xy,
            "concept": [(records[int(i)]["labels"] or ["(none)"])[0] for i in ids],
            "split": [records[int(i)]["split"] for i in ids]}


def drawn_sample(n: int, limit: int = MAX_DRAWN, seed: int = 0) -> np.ndarray:
    """Row numbers of the points to draw: all of them up to ``limit``, else a seeded sample (sorted)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def region_from_selection(selection: Mapping[str, Any] | None) -> dict | None:
    """A plotly selection (Streamlit's ``event.selection``: ``box`` [{"x": [x0, x1], "y": [y0, y1]}], ``lasso``
    [{"x": [...], "y": [...]}]) as a region: {"boxes": [[x0, x1, y0, y1], ...], "lassos": [[[x, y], ...], ...]};
    None when nothing is selected."""
    if not selection:
        return None
    boxes, lassos = [], []
    for box in selection.get("box") or []:
        xs, ys = box.get("x") or [], box.get("y") or []
        if len(xs) >= 2 and len(ys) >= 2:
            boxes.append([float(min(xs)), float(max(xs)), float(min(ys)), float(max(ys))])
    for lasso in selection.get("lasso") or []:
        xs, ys = lasso.get("x") or [], lasso.get("y") or []
        if len(xs) >= 3 and len(xs) == len(ys):
            lassos.append([[float(x), float(y)] for x, y in zip(xs, ys)])
    return {"boxes": boxes, "lassos": lassos} if boxes or lassos else None


def _in_polygon(xy: np.ndarray, polygon: Sequence[Sequence[float]]) -> np.ndarray:
    """Even-odd rule, vectorised over the points (one pass per polygon edge)."""
    poly = np.asarray(polygon, np.float64)
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    inside = np.zeros(len(xy), bool)
    for (x1, y1), (x2, y2) in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < at)
    return inside


def select_region(xy: np.ndarray, region: Mapping[str, Any] | None) -> np.ndarray:
    """A boolean mask of the points (all of them, drawn or not) inside any box or lasso of ``region``."""
    mask = np.zeros(len(xy), bool)
    if not region:
        return mask
    try:
        for x0, x1, y0, y1 in region.get("boxes") or []:
            mask |= (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
        for polygon in region.get("lassos") or []:
            mask |= _in_polygon(xy, polygon)
    except (TypeError, ValueError):
        raise UserError("A map selection is boxes [x0, x1, y0, y1] and lassos [[x, y], ...]") from None
    return mask


def map_job_config(user: User | str, dataset: str | int, model: str | int = GENERAL) -> dict:
    """The configuration of a UMAP map job over the dataset (checked visible now), for ``core.jobs.submit``."""
    ds = ds_store.get_dataset(user, dataset)
    embedding.resolve_model(user, model)
    return {"dataset": ds["id"], "model": str(model), "method": "umap"}


def run_map(config: dict, run_dir: Path | None = None, callbacks: Any = None, resume: bool = False) -> dict:
    """Embed the dataset when needed (cached, as the quality check does) and save its UMAP: the "map" job runner."""
    t0 = time.perf_counter()
    owner = config["owner"]
    ds = ds_store.get_dataset(owner, config["dataset"])
    key, _row = embedding.resolve_model(owner, config.get("model") or GENERAL)
    records = ds_store.dataset_records(ds["id"])
    if len(records) < 2:
        raise UserError(f"dataset {ds['name']!r} has {len(records)} image(s); a map needs at least two")
    steps = len(records)
    if callbacks is not None:
        callbacks.on_start({"kind": "map", "template": embedding.model_label(key), "items": steps, "epochs": 1,
                            "steps_per_epoch": steps, "start_epoch": 0})

    def step(fraction: float, phase: str) -> None:
        if callbacks is not None:
            callbacks.on_step({"epoch": 1, "step": round(fraction * steps), "steps_per_epoch": steps, "phase": phase,
                               "loss": None, "lr": None})

    got = quality.embeddings(ds, records, key,
                             lambda done, total, ips: step(0.7 * done / max(total, 1), f"embedding {done}/{total}"),
                             getattr(callbacks, "should_stop", None))
    if got is None:
        return {"dataset": ds["name"], "version": ds["version"], "stopped": True}
    ids, vectors = got
    step(0.7, "UMAP")
    xy = umap_2d(vectors, int(config.get("seed") or 0))
    _save(_map_file(quality.version_cache(ds, key), "umap"), ids, xy)
    step(1.0, "done")
    return {"dataset": ds["name"], "version": ds["version"], "method": "umap", "points": int(len(ids)),
            "seconds": round(time.perf_counter() - t0, 3), "stopped": False}
