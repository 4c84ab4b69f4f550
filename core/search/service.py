"""Visual search as the pages, the CLI and the job runner use it: build, sync, open, search, facts, near-duplicates.

An index folder (under ``paths.subdir("indexes")``) holds two files, each written atomically:
- ``embeddings.npz``: ``ids`` (int64 item ids, sorted), ``vectors`` (float32, L2-normalised rows, same order) and
  ``model`` (the model key: ``"general"`` or ``"model:<id>"``). The source of truth: the index can always be rebuilt.
- ``vectors.idx``: the search structure with its id map (``core.search.index``), chosen by size.
The ``indexes`` row (``core.store.indexes``) records dataset, dataset version, model, dimension, count, type and
parameters. Labels are read from the dataset at query time, so relabelling never needs a rebuild.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core import paths
from core.errors import NotQuick, UserError
from core.fsutil import atomic_path, open_write
from core.progress import Progress, report_count
from core.records import DatasetRow, IndexFacts, IndexRow, IndexSync, ModelRow
from core.search import embed as embedding
from core.search import index as vindex
from core.store import datasets as ds_store
from core.store import indexes as store
from core.store import memo
from core.users import NotFound, User, as_user, can_change, check_visibility, require_owner, require_role

EMBEDDINGS_FILE = "embeddings.npz"
INDEX_FILE = "vectors.idx"
PARTIAL_FILE = "partial_embeddings.npz"  # a build job's checkpoint in its run folder, for resume
CHECKPOINT_EVERY = 256  # images embedded between checkpoints of a build job
NEAR_DUPLICATE_NEIGHBOURS = 10  # neighbours looked at per image when listing near-duplicate pairs
DEFAULT_DUPLICATE_THRESHOLD = 0.95  # cosine similarity above which two images count as near-duplicates
MAX_K = 1000  # results one search may ask for


# ------------------------------------------------------------------------------------------------ files

def _save_embeddings(path: Path, ids: np.ndarray, vectors: np.ndarray, model: str) -> None:
    """Write ids, vectors and model key to one .npz, atomically (temporary file + os.replace)."""
    with atomic_path(path, what=f"index embeddings {path}") as tmp, open_write(tmp) as fh:
        np.savez(fh, ids=np.asarray(ids, np.int64), vectors=np.asarray(vectors, np.float32), model=np.array(model))


def _load_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    if not path.is_file():
        raise UserError(f"Embeddings file {path} is missing; delete the index and build it again")
    with np.load(path, allow_pickle=False) as z:
        return z["ids"].astype(np.int64), z["vectors"].astype(np.float32), str(z["model"])


def _sorted(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order]


def _stamp(folder: Path) -> tuple:
    """Changes whenever either file of the index is replaced: the key of every cache of an opened index."""
    out: list[tuple[int, int] | None] = []
    for name in (EMBEDDINGS_FILE, INDEX_FILE):
        try:
            st = (folder / name).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


# ------------------------------------------------------------------------------------------------ building

def _short_model(key: str, row: ModelRow | None) -> str:
    return embedding.GENERAL if row is None else str(row["name"])


def _progress_cb(callbacks: Any, total: int, already: int, t0: float):
    steps = max(1, -(-total // embedding.BATCH_SIZE))

    def report(done: int, _total: int, ips: float) -> None:
        if callbacks is None:
            return
        have = already + done
        rate = have / max(time.perf_counter() - t0, 1e-9)
        callbacks.on_step({"epoch": 1, "step": -(-have // embedding.BATCH_SIZE), "steps_per_epoch": steps,
                           "images_per_sec": round(ips, 2), "eta_s": round((total - have) / max(rate, 1e-9), 1),
                           "loss": None, "lr": None, "phase": "embedding", "done": have, "total": total})
    return report


def build_index(config: dict, run_dir: str | os.PathLike | None = None, callbacks: Any = None,
                resume: bool = False) -> dict:
    """Embed a dataset with a model and build its index: the "index" job runner (also runs in-process).

    config: {"owner", "dataset" (name), "model" ("general" | model id or name), "name" (optional index name)}.
    Embeddings are checkpointed in ``run_dir`` every ``CHECKPOINT_EVERY`` images; with ``resume`` the run continues
    from there. When ``callbacks.should_stop()`` turns true the run stops between batches and returns
    ``{"index_id": None, "stopped": True}``. Returns ``{"index_id", "name", "count", "stopped"}``.
    """
    owner = config.get("owner") or paths.DEFAULT_USER
    if not config.get("dataset"):
        raise UserError("Choose a dataset to index (config field 'dataset')")
    ds = ds_store.get_dataset(owner, config["dataset"])
    key, mrow = embedding.resolve_model(owner, config.get("model") or embedding.GENERAL)
    name = (config.get("name") or "").strip() or store.unique_name(owner, f"{ds['name']}-{_short_model(key, mrow)}")
    if store.name_taken(owner, name):
        raise UserError(f"index {name!r}: the name is taken; choose another or delete that index first")
    if run_dir is None:
        run_dir = tempfile.mkdtemp(prefix="index-", dir=paths.subdir("cache"))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    should_stop = getattr(callbacks, "should_stop", None) or (lambda: False)
    log = getattr(callbacks, "log", None) or (lambda line: None)

    version = ds["version"]
    records = ds_store.dataset_records(ds["id"])
    if not records:
        raise UserError(f"dataset {ds['name']!r} has no images to index; import some first")
    by_id = {r["item_id"]: r["path"] for r in records}
    model = embedding.load_embedder(key)
    t0 = time.perf_counter()

    ids_done = np.empty(0, np.int64)
    vecs_done: list[np.ndarray] = []
    partial = run_dir / PARTIAL_FILE
    if resume and partial.is_file():
        p_ids, p_vecs, p_model = _load_embeddings(partial)
        if p_model == key:
            keep = np.isin(p_ids, list(by_id))
            ids_done, vecs_done = p_ids[keep], [p_vecs[keep]]
            log(f"resumed: {len(ids_done)} of {len(records)} images already embedded")
    done_set = set(ids_done.tolist())
    todo = [i for i in by_id if i not in done_set]
    if callbacks is not None:
        callbacks.on_start({"kind": "index", "template": embedding.model_label(key), "items": len(records),
                            "epochs": 1, "steps_per_epoch": max(1, -(-len(records) // embedding.BATCH_SIZE)),
                            "start_epoch": 0, "device": str(model.device)})
    log(f"embedding {len(todo)} images of {ds['name']!r} with {embedding.model_label(key)}")
    stopped = False
    for start in range(0, len(todo), CHECKPOINT_EVERY):
        chunk = todo[start:start + CHECKPOINT_EVERY]
        report = _progress_cb(callbacks, len(records), len(ids_done), t0)
        vecs = embedding.embed_paths(model, [by_id[i] for i in chunk], progress=report, should_stop=should_stop)
        ids_done = np.concatenate([ids_done, np.asarray(chunk[:len(vecs)], np.int64)])
        vecs_done.append(vecs)
        _save_embeddings(partial, ids_done, np.concatenate(vecs_done), key)
        if should_stop() and len(ids_done) < len(records):
            stopped = True
            break
    if stopped:
        log(f"stopped after {len(ids_done)} of {len(records)} images; resume continues from there")
        return {"index_id": None, "name": name, "count": int(len(ids_done)), "stopped": True}
    embed_s = time.perf_counter() - t0
    ids, vectors = _sorted(ids_done, np.concatenate(vecs_done) if vecs_done else np.zeros((0, 0), np.float32))
    if model.embedding_dim and vectors.shape[1] != model.embedding_dim:
        raise UserError(f"The model gave {vectors.shape[1]}-d embeddings but declares {model.embedding_dim}")

    t1 = time.perf_counter()
    index = vindex.build(ids, vectors)
    index_s = time.perf_counter() - t1
    folder = paths.subdir("indexes") / uuid.uuid4().hex
    params = _params(index, key, embed_s=embed_s, index_s=index_s, n_images=len(ids))
    try:  # a failure (a full disk) leaves no half-written index folder behind
        _save_embeddings(folder / EMBEDDINGS_FILE, ids, vectors, key)
        index.save(folder / INDEX_FILE)
        index_id = store.create_index(owner, name, ds["id"], version, key, vectors.shape[1], len(ids), index.backend,
                                      params, str(folder), round(embed_s + index_s, 3))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    partial.unlink(missing_ok=True)
    log(f"index {name!r} (id {index_id}): {len(ids)} vectors, {index.backend} {index.params()}, "
        f"{embed_s + index_s:.1f} s")
    if callbacks is not None:
        callbacks.on_epoch(1, {"vectors": len(ids), "build_seconds": round(embed_s + index_s, 3)})
    return {"index_id": index_id, "name": name, "count": int(len(ids)), "stopped": False}


def _params(index: vindex.VectorIndex, key: str, **facts: Any) -> dict:
    out = {"index": index.params(), "exact": index.exact, "memory_bytes": index.memory_bytes(),
           "model_label": embedding.model_label(key)}
    for k, v in facts.items():
        out[k] = round(v, 3) if isinstance(v, float) else v
    if facts.get("embed_s") and facts.get("n_images"):
        out["images_per_sec"] = round(facts["n_images"] / facts["embed_s"], 2)
    return out


def build_index_now(user: User | str, dataset: str, model: str = embedding.GENERAL, name: str | None = None,
                    progress: Progress | None = None) -> dict:
    """Build in this process (no job queue): for the CLI ``--wait`` fallback, the page without jobs, and tests.
    ``progress(fraction, "Embedded done/total images")`` while embedding."""
    require_role(user, "member", "building an index")
    class _Progress:
        def on_start(self, info): pass
        def on_step(self, p):
            report_count(progress, int(p["done"]), int(p["total"]), "Embedded images")
        def on_epoch(self, epoch, metrics): pass
        def should_stop(self): return False
        def log(self, line): pass

    config = {"owner": as_user(user).name, "dataset": dataset, "model": model, "name": name}
    return build_index(config, None, _Progress())


# ------------------------------------------------------------------------------------------------ opening

@dataclass
class OpenIndex:
    """A loaded index: its row, search structure, and embeddings (sorted by item id). Shared; never mutate it."""

    row: IndexRow
    index: vindex.VectorIndex
    ids: np.ndarray
    vectors: np.ndarray
    model: str
    stamp: tuple
    _centroids: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.row["name"]

    def position(self, item_id: int) -> int | None:
        pos = int(np.searchsorted(self.ids, item_id))
        return pos if pos < len(self.ids) and self.ids[pos] == item_id else None


def open_index(user: User | str, index: str | int, quick: bool = False) -> OpenIndex:
    """The index ``user`` sees, loaded from its files once per process (``core.loaded``, under the memory budget)
    until a file changes (a sync or rebuild). Shared by every caller: never mutate it. ``quick``: ``NotQuick`` rather
    than loading it."""
    from core import loaded

    if quick:  # the row as read while the store has not changed since (core.store.memo)
        who = as_user(user)
        row = memo.remembered(("index", who.name, who.role, str(index)), lambda: store.get_index(who, index))
    else:
        row = store.get_index(user, index)
    folder = Path(row["path"])
    opened = loaded.get(("index", str(folder)), _stamp(folder), lambda: _load_index(row, folder), _index_bytes,
                        quick=quick)
    return opened if opened.row == row else replace(opened, row=row)  # a copy: the cached one stays as it was


def _index_bytes(opened: OpenIndex) -> int:
    return int(opened.vectors.nbytes + opened.ids.nbytes + opened.index.memory_bytes())


def _load_index(row: IndexRow, folder: Path) -> OpenIndex:
    ids, vectors, key = _load_embeddings(folder / EMBEDDINGS_FILE)
    if key != row["model"]:
        raise UserError(f"index {row['name']!r}: its embeddings come from {key} but it is recorded as built with "
                        f"{row['model']}; delete it and build it again")
    try:
        index = vindex.load(folder / INDEX_FILE)
        consistent = index.dim == vectors.shape[1] and np.array_equal(index.ids, ids)
    except UserError:
        consistent = False
    if not consistent:  # a crash between the two writes of a sync: the embeddings are the truth
        index = vindex.build(ids, vectors)
        index.save(folder / INDEX_FILE)
    return OpenIndex(row, index, ids, vectors, key, _stamp(folder))


# ------------------------------------------------------------------------------------------------ sync

def sync_index(user: User | str, index: str | int,
               progress: Progress | None = None) -> IndexSync:
    """Bring an index up to date with its dataset: embed new items, remove deleted ones; returns counts.

    Switches to the backend the new size calls for (and re-trains an IVF index that grew REBUILD_GROWTH-fold).
    """
    row = store.get_index(user, index)
    require_owner(user, row, f"Index {row['name']!r}")
    ds = ds_store.get_dataset_by_id(row["dataset_id"])
    folder = Path(row["path"])
    ids, vectors, key = _load_embeddings(folder / EMBEDDINGS_FILE)
    records = ds_store.dataset_records(ds["id"])
    current = np.array(sorted(r["item_id"] for r in records), np.int64)
    added = current[~np.isin(current, ids)]
    removed = ids[~np.isin(ids, current)]
    result: IndexSync = {"index": row["name"], "added": int(len(added)), "removed": int(len(removed)),
                         "count": int(len(ids)), "rebuilt": False}
    if len(added) == 0 and len(removed) == 0:
        store.update_index(row["id"], dataset_version=ds["version"])
        return result
    t0 = time.perf_counter()
    new_vecs = np.zeros((0, row["dim"]), np.float32)
    if len(added):
        model = embedding.load_embedder(key)
        by_id = {r["item_id"]: r["path"] for r in records}
        def cb(done: int, total: int, _ips: float) -> None:
            report_count(progress, done, total, "Embedded new images")

        new_vecs = embedding.embed_paths(model, [by_id[int(i)] for i in added], progress=cb if progress else None)
        if new_vecs.shape[1] != row["dim"]:
            raise UserError(f"index {row['name']!r} holds {row['dim']}-d embeddings but its model now gives "
                            f"{new_vecs.shape[1]}-d ones (the model changed); build a new index")
    keep = ~np.isin(ids, removed)
    all_ids, all_vecs = _sorted(np.concatenate([ids[keep], added]), np.concatenate([vectors[keep], new_vecs]))
    vec_index = vindex.load(folder / INDEX_FILE)
    n = len(all_ids)
    grew = isinstance(vec_index, vindex.IVFIndex) and n > vindex.REBUILD_GROWTH * max(vec_index.trained_on, 1)
    if vindex.choose_backend(n) != vec_index.backend or grew:
        vec_index = vindex.build(all_ids, all_vecs)
        result["rebuilt"] = True
    else:
        vec_index.remove(removed)
        vec_index.add(added, new_vecs)
    _save_embeddings(folder / EMBEDDINGS_FILE, all_ids, all_vecs, key)
    vec_index.save(folder / INDEX_FILE)
    params = dict(row["params"])
    params.update(_params(vec_index, key, sync_s=time.perf_counter() - t0))
    store.update_index(row["id"], count=n, dataset_version=ds["version"], index_type=vec_index.backend, params=params)
    result["count"] = n
    return result


# ------------------------------------------------------------------------------------------------ searching

_labels_cache: dict[tuple[str, int, int], dict] = {}
_labels_lock = threading.Lock()


def _dataset_row(opened: OpenIndex, quick: bool = False) -> DatasetRow:
    """The row of the index's dataset (its version keys the cached view), read through one of the index's items
    while it exists: one indexed lookup, without the item, split and concept counts ``get_dataset_by_id`` adds (about
    100 ms a query at 100,000 items, measured with bench/bench_api.py)."""
    dataset_id = opened.row["dataset_id"]
    if quick:  # as read while the store has not changed since (core.store.memo)
        return memo.remembered(("index_dataset", int(dataset_id)), lambda: _dataset_row(opened))
    for item in opened.ids[:1].tolist():
        row = ds_store.item_dataset(item)
        if row is not None and row["id"] == dataset_id:
            return row
    return ds_store.get_dataset_by_id(dataset_id)


def _dataset_view(opened: OpenIndex, quick: bool = False) -> dict:
    """{"labels": {item_id: [concepts]}, "paths": {item_id: path}, "version"} for the index's dataset, cached per
    dataset version. ``quick``: ``NotQuick`` rather than reading a new version's items."""
    ds = _dataset_row(opened, quick=quick)
    dataset_id = ds["id"]
    cache_key = (str(paths.home()), int(dataset_id), int(ds["version"]))
    with _labels_lock:
        hit = _labels_cache.get(cache_key)
    if hit is not None:
        return hit
    if quick:
        raise NotQuick(f"dataset {dataset_id} version {ds['version']} is not read yet")
    recs = ds_store.dataset_records(dataset_id)
    view = {"labels": {r["item_id"]: list(r["labels"]) for r in recs}, "paths": {r["item_id"]: r["path"] for r in recs},
            "version": ds["version"], "name": ds["name"]}
    with _labels_lock:
        for old in [k for k in _labels_cache if k[:2] == cache_key[:2]]:
            del _labels_cache[old]
        _labels_cache[cache_key] = view
    return view


def _concept_vector(opened: OpenIndex, view: dict, concept: str) -> np.ndarray:
    """The mean embedding of a concept's items in the index, normalised."""
    members = [i for i, labs in view["labels"].items() if concept in labs]
    if not members:
        have = sorted({c for labs in view["labels"].values() for c in labs})
        raise UserError(f"concept {concept!r}: no images in dataset {view['name']!r}; concepts: "
                        f"{', '.join(have) or 'none'}")
    rows = [p for p in (opened.position(i) for i in members) if p is not None]
    if not rows:
        raise UserError(f"concept {concept!r}: none of its images are in index {opened.name!r} yet; sync the index")
    v = opened.vectors[rows].mean(axis=0)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def query_vector(opened: OpenIndex, *, image: Any = None, item_id: int | None = None, concept: str | None = None,
                 model: Any = None, vector: Any = None) -> np.ndarray:
    """The query embedding for exactly one of: an image (path, bytes, (name, bytes), upload, PIL), an item id, a
    concept, or a raw ``vector`` (of the index's dimension; normalised here)."""
    given = [x is not None for x in (image, item_id, concept, vector)]
    if sum(given) != 1:
        raise UserError("Search with exactly one of: an image, an item id, a concept or a vector")
    if vector is not None:
        return check_vector(vector, opened.index.dim)
    if image is not None:
        query = embedding.open_image(image)  # an upload is checked (format, pixels) before the network loads
        model = model or embedding.load_embedder(opened.model)
        vec = embedding.embed_images(model, [query])[0]
        if vec.shape[0] != opened.index.dim:
            raise UserError(f"index {opened.name!r} holds {opened.index.dim}-d embeddings of "
                            f"{embedding.model_label(opened.model)}, but that model now gives {vec.shape[0]}-d ones; "
                            f"build a new index")
        return vec
    if item_id is not None:
        pos = opened.position(int(item_id))
        if pos is None:
            raise UserError(f"item {item_id} is not in index {opened.name!r} ({len(opened.ids)} images); if it was "
                            f"added to the dataset recently, sync the index")
        return opened.vectors[pos]
    return _concept_vector(opened, _dataset_view(opened), str(concept))


def check_vector(vector: Any, dim: int) -> np.ndarray:
    """A query vector as float32 of length ``dim``, L2-normalised; UserError naming what is wrong (not a list of
    numbers, the wrong dimension, not finite, all zeros)."""
    try:
        arr = np.asarray(vector) if isinstance(vector, (list, tuple, np.ndarray)) else None
    except ValueError:  # ragged nesting
        arr = None
    if arr is None or arr.dtype.kind not in "fiu":  # strings, booleans, None, objects
        raise UserError("vector must be a list of numbers")
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise UserError(f"vector has {arr.shape[0] if arr.ndim == 1 else arr.shape} values; this index holds "
                        f"{dim}-d embeddings")
    if not np.isfinite(arr).all():
        raise UserError("vector must hold finite numbers (no NaN or infinity)")
    norm = float(np.linalg.norm(arr))
    if norm == 0.0:
        raise UserError("vector is all zeros; it has no direction to search along")
    return (arr / norm).astype(np.float32)


def result_json(results: list[dict]) -> list[dict]:
    """Search results as the command line's ``--json`` and the HTTP API give them: item, concepts, score (no server
    paths)."""
    return [{"item": r["item"], "concepts": r["concepts"], "score": r["score"]} for r in results]


def embed(user: User | str, model: str | int, images: Sequence[Any]) -> dict:
    """Embeddings of ``images`` (anything ``core.search.embed.open_image`` reads, uploads held to the importer's
    rules) with a model ``user`` sees, or ``"general"``: {"model", "model_label", "dim", "embeddings": [{"image",
    "vector"}]}, float32 L2-normalised rows, the vectors an index of that model holds."""
    key, _ = embedding.resolve_model(user, model)
    if not images:
        raise UserError("embed: give at least one image")
    names = [src[0] if isinstance(src, tuple) else str(getattr(src, "name", None) or src) for src in images]
    pil = [embedding.open_image(src) for src in images]  # refuse bad uploads before the network loads
    vectors = embedding.embed_images(embedding.load_embedder(key), pil)
    return {"model": key, "model_label": embedding.model_label(key), "dim": int(vectors.shape[1]),
            "embeddings": [{"image": n, "vector": v.tolist()} for n, v in zip(names, vectors)]}


def search_vectors(opened: OpenIndex, vectors: np.ndarray, model_key: str,
                   k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Search with embeddings computed elsewhere; refuses embeddings of another model than the index's."""
    if model_key != opened.model:
        raise UserError(f"index {opened.name!r} was built with {embedding.model_label(opened.model)}; embeddings of "
                        f"{embedding.model_label(model_key)} cannot be searched in it")
    return opened.index.search(vectors, k)


def search(user: User | str, index: str | int, *, image: Any = None, item_id: int | None = None,
           concept: str | None = None, k: int = 10, concept_filter: str | None = None,
           opened: OpenIndex | None = None, model: Any = None, vector: Any = None, quick: bool = False) -> list[dict]:
    """The ``k`` most similar images, best first: [{"item", "concepts", "score", "path"}].

    Query by exactly one of ``image``, ``item_id`` (the item itself is left out), ``concept`` (mean embedding) or
    ``vector`` (an embedding of the index's model and dimension). ``concept_filter`` keeps only results labelled
    with that concept. ``opened``/``model`` let a caller pass the index and embedder it holds. ``quick`` (an event
    loop's call): ``NotQuick`` rather than anything slower than a lookup (loading the index or its dataset's labels,
    embedding an image, averaging a concept, filtering by one), so that the caller can make the call again on a thread.
    """
    if quick and (image is not None or concept is not None or concept_filter):
        raise NotQuick("an image is embedded, a concept averaged or looked for in every label")
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise UserError(f"k must be a whole number, got {k!r}") from None
    if not 1 <= k <= MAX_K:
        raise UserError(f"k must be between 1 and {MAX_K}, got {k}")
    opened = opened or open_index(user, index, quick=quick)
    q = query_vector(opened, image=image, item_id=item_id, concept=concept, model=model, vector=vector)
    view = _dataset_view(opened, quick=quick)
    if concept_filter and not any(concept_filter in labs for labs in view["labels"].values()):
        raise UserError(f"concept filter {concept_filter!r}: no images in dataset {view['name']!r} have it")
    count = min(opened.index.count, opened.index.max_k or opened.index.count)  # the most one search may return
    want = k + (1 if item_id is not None else 0)
    fetch = min(count, want if not concept_filter else want * 4)
    while True:
        scores, ids = opened.index.search(q, max(1, fetch))
        out = []
        for s, i in zip(scores[0], ids[0]):
            i = int(i)
            if i < 0 or (item_id is not None and i == int(item_id)):
                continue
            labs = view["labels"].get(i)
            if labs is None:  # deleted from the dataset since the last sync
                continue
            if concept_filter and concept_filter not in labs:
                continue
            out.append({"item": i, "concepts": labs, "score": round(float(s), 6), "path": view["paths"][i]})
            if len(out) == k:
                break
        if len(out) >= k or fetch >= count:
            return out
        fetch = min(count, fetch * 4)


def nearest_concepts(user: User | str, index: str | int, *, image: Any = None, item_id: int | None = None,
                     concept: str | None = None, top: int = 5, opened: OpenIndex | None = None,
                     model: Any = None) -> list[dict]:
    """The query's nearest concepts by cosine similarity to each concept's mean embedding: [{"concept", "score",
    "images"}], best first."""
    opened = opened or open_index(user, index)
    q = query_vector(opened, image=image, item_id=item_id, concept=concept, model=model)
    names, cents, sizes = _centroids(opened)
    if not names:
        return []
    sims = cents @ q
    order = np.argsort(-sims)[:max(1, int(top))]
    return [{"concept": names[j], "score": round(float(sims[j]), 6), "images": sizes[j]} for j in order]


def _centroids(opened: OpenIndex) -> tuple[list[str], np.ndarray, list[int]]:
    view = _dataset_view(opened)
    hit = opened._centroids.get(view["version"])
    if hit is not None:
        return hit
    members: dict[str, list[int]] = {}
    for item, labs in view["labels"].items():
        pos = opened.position(item)
        if pos is None:
            continue
        for c in labs:
            members.setdefault(c, []).append(pos)
    names = sorted(members)
    cents = np.zeros((len(names), opened.vectors.shape[1]), np.float32)
    for j, c in enumerate(names):
        v = opened.vectors[members[c]].mean(axis=0)
        cents[j] = v / max(float(np.linalg.norm(v)), 1e-12)
    result = (names, cents, [len(members[c]) for c in names])
    opened._centroids.clear()  # a memo shared by the cached index and its copies: one version kept
    opened._centroids[view["version"]] = result
    return result


# ------------------------------------------------------------------------------------------------ near-duplicates

def duplicate_pairs(ids: np.ndarray, vectors: np.ndarray, threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
                    index: vindex.VectorIndex | None = None, limit: int = 1000) -> list[tuple[int, int, float]]:
    """Pairs (a, b, score) with a < b whose cosine similarity is at least ``threshold``, most similar first.

    Looks at each vector's ``NEAR_DUPLICATE_NEIGHBOURS`` nearest neighbours (exact while the index is exact).
    """
    if len(ids) < 2:
        return []
    index = index or vindex.build(ids, vectors, backend="flat")
    pairs: dict[tuple[int, int], float] = {}
    k = min(len(ids), NEAR_DUPLICATE_NEIGHBOURS + 1)
    for start in range(0, len(ids), 4096):
        scores, found = index.search(vectors[start:start + 4096], k)
        for a, srow, frow in zip(ids[start:start + 4096], scores, found):
            for s, b in zip(srow, frow):
                if b < 0 or b == a or s < threshold:
                    continue
                pair = (int(min(a, b)), int(max(a, b)))
                pairs[pair] = max(pairs.get(pair, -1.0), float(s))
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [(a, b, round(s, 6)) for (a, b), s in ranked]


def near_duplicates(user: User | str, index: str | int, threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
                    limit: int = 1000, opened: OpenIndex | None = None) -> list[dict]:
    """Near-duplicate pairs among an index's images: [{"a", "b", "score", "a_path", "b_path", "a_concepts",
    "b_concepts"}], most similar first."""
    if not 0.0 < float(threshold) <= 1.0:
        raise UserError(f"threshold must be in (0, 1], got {threshold}")
    opened = opened or open_index(user, index)
    view = _dataset_view(opened)
    out = []
    for a, b, s in duplicate_pairs(opened.ids, opened.vectors, float(threshold), opened.index, limit):
        if a in view["paths"] and b in view["paths"]:
            out.append({"a": a, "b": b, "score": s, "a_path": view["paths"][a], "b_path": view["paths"][b],
                        "a_concepts": view["labels"][a], "b_concepts": view["labels"][b]})
    return out


def dataset_near_duplicates(user: User | str, dataset: str, threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
                            model: str = embedding.GENERAL, limit: int = 1000) -> list[dict]:
    """Near-duplicate pairs of a dataset, for the health report: uses an index of that dataset and model when one
    exists (synced first), else embeds the images in memory (nothing stored)."""
    ds = ds_store.get_dataset(user, dataset)
    key, _ = embedding.resolve_model(user, model)
    existing = [r for r in store.list_indexes(user, dataset_id=ds["id"], model=key) if can_change(user, r)]
    if existing:
        sync_index(user, existing[0]["id"])
        return near_duplicates(user, existing[0]["id"], threshold, limit)
    if not 0.0 < float(threshold) <= 1.0:
        raise UserError(f"threshold must be in (0, 1], got {threshold}")
    recs = ds_store.dataset_records(ds["id"])
    if len(recs) < 2:
        return []
    vectors = embedding.embed_paths(embedding.load_embedder(key), [r["path"] for r in recs])
    ids = np.array([r["item_id"] for r in recs], np.int64)
    by_id = {r["item_id"]: r for r in recs}
    return [{"a": a, "b": b, "score": s, "a_path": by_id[a]["path"], "b_path": by_id[b]["path"],
             "a_concepts": by_id[a]["labels"], "b_concepts": by_id[b]["labels"]}
            for a, b, s in duplicate_pairs(ids, vectors, float(threshold), limit=limit)]


# ------------------------------------------------------------------------------------------------ facts, list, delete

def index_facts(user: User | str, index: str | int) -> IndexFacts:
    """What the page and ``index list`` show: model, dimension, count, type and parameters, build time, memory."""
    row = store.get_index(user, index)
    try:
        ds = ds_store.get_dataset_by_id(row["dataset_id"])
        ds_name, ds_version = ds["name"] if ds["owner"] == as_user(user).name else f"{ds['owner']}/{ds['name']}", \
            ds["version"]
    except UserError:
        ds_name, ds_version = None, None
    params = row["params"]
    folder = Path(row["path"])
    disk = sum(f.stat().st_size for f in folder.glob("*") if f.is_file()) if folder.is_dir() else 0
    return {
        "id": row["id"], "name": row["name"], "owner": row["owner"], "visibility": row["visibility"],
        "dataset": ds_name, "dataset_id": row["dataset_id"],
        "model": row["model"], "model_label": embedding.model_label(row["model"]), "dim": row["dim"],
        "count": row["count"], "index_type": row["index_type"], "exact": bool(params.get("exact", True)),
        "index_params": params.get("index", {}), "build_seconds": row["build_seconds"],
        "images_per_sec": params.get("images_per_sec"), "memory_bytes": params.get("memory_bytes"),
        "disk_bytes": disk, "dataset_version": row["dataset_version"], "current_dataset_version": ds_version,
        "stale": ds_version is not None and ds_version != row["dataset_version"], "created_at": row["created_at"],
    }


def list_indexes(user: User | str, dataset: str | None = None) -> list[IndexFacts]:
    """Facts of the indexes the user sees, own and the team's (optionally of one dataset), newest first."""
    dataset_id = ds_store.get_dataset(user, dataset)["id"] if dataset else None
    return [index_facts(user, r["id"]) for r in store.list_indexes(user, dataset_id=dataset_id)]


def delete_index(user: User | str, index: str | int) -> None:
    """Delete the user's index: its row and folder."""
    row = store.get_index(user, index)
    require_owner(user, row, f"Index {row['name']!r}")
    store.delete_index_row(row["id"])
    from core import loaded

    loaded.drop(("index", str(Path(row["path"]))))
    folder = Path(row["path"])
    if folder.is_dir() and paths.subdir("indexes") in folder.resolve().parents:
        shutil.rmtree(folder, ignore_errors=True)


def share_index(user: User | str, index: str | int, visibility: str) -> IndexFacts:
    """Make the user's index ``team`` (everyone may search it and see the images it holds) or ``private`` again."""
    row = store.get_index(user, index)
    require_owner(user, row, f"Index {row['name']!r}")
    store.set_visibility(row["id"], check_visibility(visibility))
    return index_facts(user, row["id"])


def index_item(user: User | str, index: str | int, item_id: int) -> dict:
    """An item of the index's dataset (path, thumbnail, labels, ...), for a query by item id. Any other item, and
    one that does not exist, answers the same: NotFound."""
    row = store.get_index(user, index)
    try:
        item_id = int(item_id)
    except (TypeError, ValueError):
        raise NotFound(f"Unknown item id {item_id}") from None
    item_ds = ds_store.item_dataset(item_id)
    if (item_ds["id"] if item_ds else None) != row["dataset_id"]:
        raise NotFound(f"Unknown item id {item_id}")
    return ds_store.get_item(item_id)


def index_concepts(user: User | str, index: str | int) -> list[str]:
    """The concepts of the index's dataset (for a query by concept and the result filter), sorted."""
    row = store.get_index(user, index)
    return ds_store.dataset_concepts(row["dataset_id"])


def index_first_item(user: User | str, index: str | int) -> int | None:
    """The first item of the index's dataset (a default for a query by item id), or None when it is empty."""
    row = store.get_index(user, index)
    first = ds_store.find_items(row["dataset_id"], limit=1)
    return first[0]["item_id"] if first else None
