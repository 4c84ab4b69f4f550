"""Data quality: what to fix first in a dataset (label mistakes, outliers, near-duplicates), ranked; checked marks.

One run (the "quality" job, or :func:`find_issues_now` in this process) embeds the dataset's images with the general
embedder or a trained model the user sees, then:

- label issues: out-of-sample predicted probabilities from k-fold logistic regression on the embeddings
  (scikit-learn ``cross_val_predict``), given to cleanlab (``cleanlab.filter.find_label_issues``, ranked by
  self-confidence); the suggested label is the most probable concept (every concept at or above one half on a
  multi-label dataset). Score: 1 - the probability the held-out model gives the given label (multi-label: 1 -
  cleanlab's label quality score, its per-concept self-confidences pooled).
- outliers: each image's uniqueness is its mean cosine distance to its ``OUTLIER_NEIGHBOURS`` nearest images (FAISS,
  exact); an image above the upper Tukey fence (Q3 + 1.5 IQR) of the dataset's uniqueness is an outlier. Score: the
  share of the dataset's images less unique than it.
- near-duplicates as the health report finds them (``core.search.service.duplicate_pairs``): the later image of each
  pair is listed, scored by cosine similarity.

Embeddings are cached per dataset version and embedder (``cache/embeddings-ds<id>-v<version>-<model>/``); a new
version reuses the vectors of the images it kept, so relabelling never re-embeds. The run's list is saved beside them
(``issues.json``); :func:`dataset_issues` reads the newest and leaves out what was fixed, removed or marked checked
since. Checked marks are not a cache (they cannot be rebuilt): they live in ``quality/`` of the data directory, one
file per dataset, and are kept out of every later run.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from core import disk, paths
from core.errors import UserError
from core.fsutil import atomic_path, atomic_write_bytes, open_write
from core.models import GENERAL
from core.progress import Progress, report_count
from core.records import DatasetRow, IssueReport, IssueRow, Neighbour
from core.search import embed as embedding
from core.store import datasets as ds_store
from core.users import User, as_user, require_owner, require_role

ISSUE_KINDS = ("label", "outlier", "near_duplicate")
MAX_FOLDS = 5  # k of the k-fold out-of-sample probabilities (fewer when a concept has fewer images)
MIN_PER_CONCEPT = 2  # a concept with fewer labelled images gives no label issues: nothing to hold it out against
LOGREG_C = 1.0  # inverse regularisation of the logistic regression on standardised embeddings
OUTLIER_NEIGHBOURS = 5  # neighbours whose mean distance is an image's uniqueness
MIN_OUTLIER_ITEMS = 8  # below this many images there is no distribution to stand out of
NEAR_DUPLICATE_THRESHOLD = 0.90  # cosine similarity: the health tab's default, which catches resized copies
EMBEDDINGS_FILE = "embeddings.npz"
ISSUES_FILE = "issues.json"
CACHE_PREFIX = "embeddings"


# ------------------------------------------------------------------------------------------------ the analysis

def _standardised_logreg(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=LOGREG_C, max_iter=500, random_state=seed))


def _folds(counts: Sequence[int]) -> int:
    return max(2, min(MAX_FOLDS, min(counts)))


def label_issues(labels: Sequence[Sequence[str]], vectors: np.ndarray, seed: int = 0,
                 progress: Progress | None = None) -> list[tuple[int, list[str], float]]:
    """Rows of ``labels`` whose given labels look wrong: ``(row, suggested concepts, score)``, most suspect first.

    Items without labels, and concepts with fewer than ``MIN_PER_CONCEPT`` items, are left out. Multi-label when any
    item has more than one label (one-vs-rest logistic regression, cleanlab's multi-label mode).
    """
    import warnings

    from cleanlab.filter import find_label_issues
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    multi = any(len(ls) > 1 for ls in labels)
    counts: dict[str, int] = {}
    for ls in labels:
        for name in ls:
            counts[name] = counts.get(name, 0) + 1
    names = sorted(n for n, c in counts.items() if c >= MIN_PER_CONCEPT)
    if len(names) < 2:
        return []
    col = {n: i for i, n in enumerate(names)}
    if multi:
        rows = [i for i, ls in enumerate(labels) if ls and all(n in col for n in ls)]
    else:
        rows = [i for i, ls in enumerate(labels) if len(ls) == 1 and ls[0] in col]
    if len(rows) < 2 * MIN_PER_CONCEPT:
        return []
    x = np.asarray(vectors, np.float32)[rows]
    if progress is not None:
        progress(0.0, f"Fitting {len(names)} concepts on {len(rows):,} labelled images")
    with warnings.catch_warnings():  # a fold without some concept (multi-label) is expected, not news
        warnings.simplefilter("ignore")
        if multi:
            from sklearn.multiclass import OneVsRestClassifier

            given = [[col[n] for n in labels[i]] for i in rows]
            y = np.zeros((len(rows), len(names)), np.int64)
            for r, cs in enumerate(given):
                y[r, cs] = 1
            cv: Any = KFold(_folds([len(rows)]), shuffle=True, random_state=seed)
            probs = cross_val_predict(OneVsRestClassifier(_standardised_logreg(seed)), x, y, cv=cv,
                                      method="predict_proba")
            ranked = find_label_issues(given, probs, multi_label=True, return_indices_ranked_by="self_confidence")
            from cleanlab.multilabel_classification.rank import get_label_quality_scores

            quality_of = get_label_quality_scores(given, probs)  # per class self-confidence, pooled
        else:
            y1 = np.array([col[labels[i][0]] for i in rows], np.int64)
            cv = StratifiedKFold(_folds(np.bincount(y1).tolist()), shuffle=True, random_state=seed)
            probs = cross_val_predict(_standardised_logreg(seed), x, y1, cv=cv, method="predict_proba")
            ranked = find_label_issues(y1, probs, return_indices_ranked_by="self_confidence")
    out = []
    for r in np.asarray(ranked, np.int64).tolist():
        p = probs[r]
        if multi:
            picked = [names[c] for c in np.flatnonzero(p >= 0.5)] or [names[int(np.argmax(p))]]
            given_p = float(quality_of[r])
        else:
            picked = [names[int(np.argmax(p))]]
            given_p = float(p[y1[r]])
        out.append((rows[r], sorted(picked), round(1.0 - given_p, 6)))
    return out


def uniqueness(vectors: np.ndarray, k: int = OUTLIER_NEIGHBOURS) -> np.ndarray:
    """Each row's mean cosine distance to its ``k`` nearest other rows (FAISS, exact inner product on unit
    vectors): 0 for an image with identical neighbours, larger the more it stands apart."""
    from core.search import index as vindex

    n = len(vectors)
    if n < 2:
        return np.zeros(n, np.float32)
    k = min(k, n - 1)
    rows = np.arange(n, dtype=np.int64)
    scores, found = vindex.build(rows, vectors, backend="flat").search(vectors, k + 1)
    others = np.where(found != rows[:, None], scores, -np.inf)  # the row itself is not its own neighbour
    nearest = -np.sort(-others, axis=1)[:, :k]
    return (1.0 - nearest.mean(axis=1)).astype(np.float32)


def outliers(unique: np.ndarray) -> list[tuple[int, float]]:
    """Rows above the upper Tukey fence of ``unique``: ``(row, share of rows less unique)``, most unique first."""
    n = len(unique)
    if n < MIN_OUTLIER_ITEMS:
        return []
    q1, q3 = np.percentile(unique, [25, 75])
    fence = q3 + 1.5 * (q3 - q1)
    ranks = np.argsort(np.argsort(unique, kind="stable"), kind="stable")
    found = [(int(i), round(float(ranks[i]) / (n - 1), 6)) for i in np.flatnonzero(unique > fence)]
    return sorted(found, key=lambda t: (-t[1], t[0]))


def rank_issues(ids: Sequence[int], labels: Sequence[Sequence[str]], vectors: np.ndarray,
                skip: Collection[int] = (), seed: int = 0,
                progress: Progress | None = None) -> tuple[list[IssueRow], bool]:
    """The ranked issue list of embedded items (their ``ids``, their ``labels``, unit ``vectors`` row by row), and
    whether the dataset is multi-label. Items in ``skip`` (checked) are not listed, though they take part."""
    from core.search.service import duplicate_pairs

    multi = any(len(ls) > 1 for ls in labels)

    def shown(names: Sequence[str]) -> str | list[str] | None:
        if multi:
            return sorted(names)
        return names[0] if names else None

    rows: list[IssueRow] = []
    for r, suggested, score in label_issues(labels, vectors, seed, progress):
        rows.append({"item": int(ids[r]), "kind": "label", "given": shown(labels[r]),
                     "suggested": shown(suggested), "score": score})
    if progress is not None:
        progress(0.9, "Measuring uniqueness and near-duplicates")
    for r, score in outliers(uniqueness(vectors)):
        rows.append({"item": int(ids[r]), "kind": "outlier", "given": shown(labels[r]), "suggested": None,
                     "score": score})
    row_of = {int(i): r for r, i in enumerate(ids)}
    id_array = np.asarray(ids, np.int64)
    best: dict[int, float] = {}
    for _a, b, s in duplicate_pairs(id_array, vectors, NEAR_DUPLICATE_THRESHOLD, limit=len(id_array)):
        best[b] = max(best.get(b, 0.0), s)  # the later image of a pair is the one to remove
    for b, s in best.items():
        rows.append({"item": b, "kind": "near_duplicate", "given": shown(labels[row_of[b]]), "suggested": None,
                     "score": round(float(s), 6)})
    skipped = set(skip)
    rows = [r for r in rows if r["item"] not in skipped]
    rows.sort(key=lambda r: (-r["score"], ISSUE_KINDS.index(r["kind"]), r["item"]))
    return rows, multi


# ------------------------------------------------------------------------------------------------ embeddings cache

def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", key)


def _cache_folders(dataset_id: int, key: str) -> list[tuple[int, Path]]:
    """The dataset's embedding caches for one model: (version, folder), newest version first."""
    pattern = re.compile(rf"^{CACHE_PREFIX}-ds{int(dataset_id)}-v(\d+)-{re.escape(_slug(key))}$")
    found = []
    for entry in paths.subdir("cache").iterdir():
        match = pattern.match(entry.name)
        if match and (entry / EMBEDDINGS_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def _folder(dataset_id: int, version: int, key: str) -> Path:
    return paths.subdir("cache") / f"{CACHE_PREFIX}-ds{int(dataset_id)}-v{int(version)}-{_slug(key)}"


def _load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(folder / EMBEDDINGS_FILE, allow_pickle=False) as z:
        return z["ids"].astype(np.int64), z["vectors"].astype(np.float32)


def newest_cache(ds: DatasetRow, key: str) -> tuple[int, Path] | None:
    """(version, folder) of the dataset's newest embeddings cache with model ``key``, or None."""
    found = _cache_folders(ds["id"], key)
    return found[0] if found else None


def version_cache(ds: DatasetRow, key: str) -> Path:
    """The embeddings cache folder of the dataset's current version with model ``key`` (it may not exist yet)."""
    return _folder(ds["id"], ds["version"], key)


def load_cached(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The item ids and unit embeddings of a cache folder."""
    return _load(folder)


def embeddings(ds: DatasetRow, records: Sequence[Mapping[str, Any]], key: str,
               progress: Callable[[int, int, float], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Unit embeddings of ``records`` (rows in their order) with model ``key``: from the cache of this dataset
    version, else the newest cached version's vectors for the items kept and the model for the rest; the result is
    cached for this version (older versions' caches of the model go). None when ``should_stop`` stopped it."""
    want = np.array([int(r["item_id"]) for r in records], np.int64)
    have_ids, have_vecs = np.empty(0, np.int64), np.zeros((0, 0), np.float32)
    cached = _cache_folders(ds["id"], key)
    here = _folder(ds["id"], ds["version"], key)
    for _version, folder in cached:
        try:
            have_ids, have_vecs = _load(folder)
        except (OSError, ValueError, KeyError):
            continue  # a damaged cache is rebuilt
        break
    pos = {int(i): r for r, i in enumerate(have_ids)}
    todo = [r for r, i in enumerate(want.tolist()) if i not in pos]
    if todo:
        model = embedding.load_embedder(key)
        new = embedding.embed_paths(model, [records[r]["path"] for r in todo], progress=progress,
                                    should_stop=should_stop)
        if len(new) < len(todo):
            return None
    else:
        new = np.zeros((0, have_vecs.shape[1] if have_vecs.size else 0), np.float32)
    dim = new.shape[1] if len(todo) else have_vecs.shape[1]
    vectors = np.empty((len(want), dim), np.float32)
    fresh = dict(zip(todo, range(len(todo))))
    for r, i in enumerate(want.tolist()):
        vectors[r] = new[fresh[r]] if r in fresh else have_vecs[pos[i]]
    if todo or not (here / EMBEDDINGS_FILE).is_file():
        here.mkdir(parents=True, exist_ok=True)
        with atomic_path(here / EMBEDDINGS_FILE, what=f"embeddings cache {here.name}") as tmp, open_write(tmp) as fh:
            np.savez(fh, ids=want, vectors=vectors, model=np.array(key))
        for _version, folder in cached:
            if folder != here:
                shutil.rmtree(folder, ignore_errors=True)
        disk.enforce_cache_budget(keep=here)
    disk.touch(here)
    return want, vectors


# ------------------------------------------------------------------------------------------------ checked marks

def _checked_file(ds: DatasetRow) -> Path:
    # the creation time keeps the marks of a deleted dataset off a new one that gets the same id
    return paths.subdir("quality") / f"ds{int(ds['id'])}-{int(ds['created_at'] * 1000)}-checked.json"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_suffix(".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_checked(ds: DatasetRow) -> set[int]:
    try:
        return {int(i) for i in json.loads(_checked_file(ds).read_text())}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, TypeError):
        return set()  # a damaged file: the marks are lost, never the dataset


def checked_items(user: User | str, dataset: str | int) -> list[int]:
    """The items of the dataset marked checked (kept out of every quality run), sorted."""
    ds = ds_store.get_dataset(user, dataset)
    present = {r["item_id"] for r in ds_store.dataset_records(ds["id"])}
    return sorted(_read_checked(ds) & present)


def mark_checked(user: User | str, dataset: str | int, item_ids: Sequence[int], checked: bool = True) -> int:
    """Mark items of the user's dataset checked (or not, with ``checked=False``): a checked item is kept out of
    later quality lists. Changes no image or label, so no new version. Returns how many items are checked now."""
    ds = ds_store.get_dataset(user, dataset)
    require_owner(user, ds, f"Dataset {ds['name']!r}")
    try:
        ids = {int(i) for i in item_ids}
    except (TypeError, ValueError):
        raise UserError("checked: give item ids (whole numbers)") from None
    present = {r["item_id"] for r in ds_store.dataset_records(ds["id"])}
    if ids - present:
        raise UserError(f"Items {sorted(ids - present)[:5]} are not in dataset {ds['name']!r}")
    path = _checked_file(ds)
    with _locked(path):
        marks = _read_checked(ds) & present
        marks = marks | ids if checked else marks - ids
        atomic_write_bytes(path, json.dumps(sorted(marks)).encode(), what=f"checked marks of {ds['name']!r}")
    return len(marks)


# ------------------------------------------------------------------------------------------------ running

def run_quality(config: dict, run_dir: Path | None = None, callbacks: Any = None, resume: bool = False) -> dict:
    """Embed a dataset (cached) and rank its issues: the "quality" job runner (also runs in-process).

    config: {"owner", "dataset" (name), "model" ("general" | a model's id or name), "seed"}. Saves the list beside
    the embeddings and returns {"dataset", "version", "model", "issues", "counts", "seconds", "stopped"}.
    """
    t0 = time.perf_counter()
    owner = config.get("owner") or paths.DEFAULT_USER
    ds = ds_store.get_dataset(owner, config["dataset"])
    key, _row = embedding.resolve_model(owner, config.get("model") or GENERAL)
    records = ds_store.dataset_records(ds["id"])
    if len(records) < 2:
        raise UserError(f"dataset {ds['name']!r} has {len(records)} image(s); a quality check needs at least two")
    should_stop = getattr(callbacks, "should_stop", None) or (lambda: False)
    log = getattr(callbacks, "log", None) or (lambda line: None)
    steps = max(1, len(records))
    if callbacks is not None:
        callbacks.on_start({"kind": "quality", "template": embedding.model_label(key), "items": len(records),
                            "epochs": 1, "steps_per_epoch": steps, "start_epoch": 0})

    def step(fraction: float, phase: str) -> None:
        if callbacks is not None:
            callbacks.on_step({"epoch": 1, "step": max(0, min(steps, round(fraction * steps))),
                               "steps_per_epoch": steps, "phase": phase, "loss": None, "lr": None})

    def embedded(done: int, total: int, ips: float) -> None:
        step(0.8 * done / max(total, 1), f"embedding {done}/{total} images ({ips:.0f}/s)")

    log(f"quality of {ds['name']!r} version {ds['version']}: {len(records)} images, {embedding.model_label(key)}")
    got = embeddings(ds, records, key, embedded, should_stop)
    if got is None:
        return {"dataset": ds["name"], "version": ds["version"], "model": key, "issues": 0, "stopped": True}
    ids, vectors = got
    step(0.8, "finding label issues")
    rows, multi = rank_issues(ids.tolist(), [r["labels"] for r in records], vectors, _read_checked(ds),
                              seed=int(config.get("seed") or 0),
                              progress=lambda f, message: step(0.8 + 0.2 * f, message))
    counts = {k: sum(r["kind"] == k for r in rows) for k in ISSUE_KINDS}
    seconds = round(time.perf_counter() - t0, 3)
    saved = {"dataset_id": ds["id"], "version": ds["version"], "model": key, "multi_label": multi,
             "created_at": time.time(), "seconds": seconds, "counts": counts, "issues": rows}
    atomic_write_bytes(_folder(ds["id"], ds["version"], key) / ISSUES_FILE, json.dumps(saved).encode(),
                       what=f"quality list of {ds['name']!r}")
    step(1.0, "done")
    log(f"{len(rows)} issues: " + ", ".join(f"{k} {n}" for k, n in counts.items()) + f" in {seconds:.1f} s")
    return {"dataset": ds["name"], "version": ds["version"], "model": key, "issues": len(rows), "counts": counts,
            "seconds": seconds, "stopped": False}


def quality_job_config(user: User | str, dataset: str | int, model: str | int = GENERAL) -> dict:
    """The configuration of a quality job over the dataset (checked visible now), for ``core.jobs.submit``."""
    ds = ds_store.get_dataset(user, dataset)
    embedding.resolve_model(user, model)  # an unknown model or a detector is refused before anything is queued
    return {"dataset": ds["id"], "model": str(model)}


def find_issues_now(user: User | str, dataset: str | int, model: str | int = GENERAL,
                    progress: Progress | None = None) -> IssueReport:
    """Run the quality check in this process (no job queue: tests, benchmarks) and return its report."""
    require_role(user, "member", "checking a dataset's quality")
    ds = ds_store.get_dataset(user, dataset)

    class _Callbacks:
        def on_start(self, info: dict) -> None:
            pass

        def on_step(self, p: dict) -> None:
            report_count(progress, int(p["step"]), int(p["steps_per_epoch"]), str(p.get("phase") or ""))

        def should_stop(self) -> bool:
            return False

        def log(self, line: str) -> None:
            pass

    run_quality({"owner": as_user(user).name, "dataset": ds["id"], "model": str(model)}, None, _Callbacks())
    report = dataset_issues(user, ds["id"], model)
    assert report is not None  # just saved
    return report


# ------------------------------------------------------------------------------------------------ reading

def _newest_saved(dataset_id: int, key: str) -> dict | None:
    for _version, folder in _cache_folders(dataset_id, key):
        try:
            return json.loads((folder / ISSUES_FILE).read_text())
        except (OSError, ValueError):
            continue
    return None


def _same(given: Any, labels: list[str], multi: bool) -> bool:
    if multi:
        return sorted(given or []) == sorted(labels)
    return (labels == [given]) if given is not None else not labels


def dataset_issues(user: User | str, dataset: str | int, model: str | int = GENERAL) -> IssueReport | None:
    """The newest quality list of the dataset with this model, as it stands now (None: no run yet, or its cache was
    evicted). Items removed since, marked checked, or relabelled since (for label issues) are left out."""
    ds = ds_store.get_dataset(user, dataset)
    key, _row = embedding.resolve_model(user, model)
    saved = _newest_saved(ds["id"], key)
    if saved is None:
        return None
    now = {r["item_id"]: r["labels"] for r in ds_store.dataset_records(ds["id"])}
    checked = _read_checked(ds)
    multi = bool(saved["multi_label"])
    rows: list[IssueRow] = [r for r in saved["issues"] if r["item"] in now and r["item"] not in checked
                            and (r["kind"] != "label" or _same(r["given"], now[r["item"]], multi))]
    return {"dataset": ds["name"], "model": key, "version": int(saved["version"]), "current_version": ds["version"],
            "multi_label": multi, "created_at": float(saved["created_at"]), "seconds": float(saved["seconds"]),
            "counts": dict(saved["counts"]), "issues": rows}


def item_neighbours(user: User | str, dataset: str | int, item_id: int, k: int = 6,
                    model: str | int = GENERAL) -> list[Neighbour]:
    """The ``k`` images of the dataset nearest to one of its items, from the newest cached embeddings (empty before
    the first quality run), most similar first."""
    ds = ds_store.get_dataset(user, dataset)
    key, _row = embedding.resolve_model(user, model)
    try:
        item_id, k = int(item_id), int(k)
    except (TypeError, ValueError):
        raise UserError("neighbours: the item id and k must be whole numbers") from None
    if not 1 <= k <= 100:
        raise UserError(f"neighbours: k must be between 1 and 100, got {k}")
    records = {r["item_id"]: r for r in ds_store.dataset_records(ds["id"])}
    if item_id not in records:
        raise UserError(f"Item {item_id} is not in dataset {ds['name']!r}")
    cached = _cache_folders(ds["id"], key)
    if not cached:
        return []
    ids, vectors = _load(cached[0][1])
    where = np.flatnonzero(ids == item_id)
    if not len(where):
        return []
    sims = vectors @ vectors[where[0]]
    out: list[Neighbour] = []
    for r in np.argsort(-sims, kind="stable"):
        other = int(ids[r])
        if other == item_id or other not in records:
            continue
        out.append({"item": other, "score": round(float(sims[r]), 6), "labels": records[other]["labels"],
                    "path": records[other]["path"]})
        if len(out) == k:
            break
    return out


def accept_suggestions(user: User | str, dataset: str | int, item_ids: Sequence[int],
                       model: str | int = GENERAL) -> int:
    """Give the chosen items the labels their label issues suggest (newest list of this model), in one new version
    of the user's dataset; returns it. Items without a label suggestion are refused (UserError naming them)."""
    report = dataset_issues(user, dataset, model)
    ds = ds_store.get_dataset(user, dataset)
    require_owner(user, ds, f"Dataset {ds['name']!r}")
    suggested = {r["item"]: r["suggested"] for r in (report or {"issues": []})["issues"]
                 if r["kind"] == "label" and r["suggested"] is not None}
    try:
        wanted = [int(i) for i in item_ids]
    except (TypeError, ValueError):
        raise UserError("accept: give item ids (whole numbers)") from None
    missing = [i for i in wanted if i not in suggested]
    if missing:
        raise UserError(f"Items {missing[:5]} have no label suggestion in the quality list; run the check again or "
                        f"pick their labels by hand")
    from core.data.service import relabel_items

    return relabel_items(user, ds["id"], {i: [s] if isinstance(s, str) else list(s)
                                          for i, s in ((i, suggested[i]) for i in wanted)})


# ------------------------------------------------------------------------------------------------ retrain

def last_training_config(user: User | str, dataset: str | int) -> dict | None:
    """The configuration of the user's newest training job on this dataset (None: there is none)."""
    from core.store import jobs as job_store

    ds = ds_store.get_dataset(user, dataset)
    name = as_user(user).name
    ref = ds["name"] if ds["owner"] == name else f"{ds['owner']}/{ds['name']}"
    for job in job_store.list_jobs(name):
        cfg = job.get("config") or {}
        if job["type"] == "train" and cfg.get("dataset") in (ref, ds["id"], str(ds["id"])):
            return dict(cfg)
    return None


def retrain(user: User | str, dataset: str | int) -> int:
    """Queue a training job with the configuration of the user's newest one on this dataset (template, parameters,
    options, seed), on the dataset as it is now: "retrain on the fixed version". The model is named after the old one
    with the version (``birds-clf-v7``). Returns the new job's id; UserError when nothing was trained on it yet."""
    import copy

    from core import jobs
    from core.store.models import unique_name

    ds = ds_store.get_dataset(user, dataset)
    require_owner(user, ds, f"Dataset {ds['name']!r}")
    last = last_training_config(user, ds["id"])
    if last is None:
        raise UserError(f"Nothing was trained on dataset {ds['name']!r} yet: train a model on it first (Train page)")
    config = {k: copy.deepcopy(v) for k, v in last.items() if k not in ("owner", "run")}
    if config.get("name"):
        base = re.sub(r"-v\d+$", "", str(config["name"]))
        config["name"] = unique_name(as_user(user).name, f"{base}-v{ds['version']}")
    return jobs.submit(user, "train", config)
