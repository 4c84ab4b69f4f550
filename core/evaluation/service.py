"""Evaluate a stored model on its dataset's held-out split, and cache the result beside the model.

The cache is two files in the model's folder: ``evaluation.json`` (every figure, what the page and the CLI show) and
``evaluation.npz`` (the raw per-item probabilities or embeddings, so a threshold change is recomputed in
milliseconds without running the network). The cache is reused while the dataset version, the weights file and this
module's ``EVAL_VERSION`` are unchanged.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.evaluation import metrics as m
from core.progress import Progress, part, report_count
from core.records import (
    ConceptFigures,
    DatasetRow,
    DatasetSummary,
    EmbedderBaseline,
    Evaluation,
    HeadTuning,
    ModelRow,
    TrainTime,
    TrainTimes,
)
from core.users import User, as_user, can_see, check_visibility, require_owner

EVAL_VERSION = 2  # bump when the figures' definitions change, so old caches are recomputed
BATCH = 32  # images per forward pass during evaluation
WEIGHTS_FILE = "weights.safetensors"


# ------------------------------------------------------------------------------------------------ loading


def weights_file(row: ModelRow) -> Path:
    """The model's weights file; UserError naming it when it is missing."""
    path = Path(row["path"]) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"model {row['name']!r}: weights file {path} is missing; the model cannot be used "
                        "(train it again, or import an exported zip)")
    return path


def load_model(row: ModelRow):
    """The model's network, ready to predict (``core.models.io.LoadedModel``) on the inference device: loaded once
    per process and shared (``core.loaded``, under the memory budget ``loaded_max_bytes``), reloaded when its weights
    change.

    Weights are read with safetensors only; a missing or corrupt file gives a UserError naming it.
    """
    from core import loaded

    wf = weights_file(row)
    try:
        return loaded.model_dir(row["path"], WEIGHTS_FILE)
    except UserError:
        raise
    except Exception as exc:  # safetensors' own errors, shape mismatches, broken config.json
        raise UserError(f"model {row['name']!r}: weights file {wf} is corrupt or does not fit the "
                        f"{row['template']} network ({type(exc).__name__}: {exc})") from exc


def get(user: User | str, model: str | int) -> ModelRow:
    """The model row ``user`` sees by name, ``owner/name`` or id (NotFound, as for a missing one, otherwise)."""
    from core.store.models import get_model

    return get_model(user, model)


def list_models(user: User | str, kind: str | None = None) -> list[ModelRow]:
    """The model rows ``user`` sees (own and the team's), newest first, optionally of one kind."""
    from core.store.models import list_models as _list

    return _list(user, kind)


def delete_model(user: User | str, model: str | int) -> None:
    """Delete the user's model: its row, epoch metrics and folder."""
    from core.store.models import delete_model as _delete

    row = get(user, model)
    require_owner(user, row, f"Model {row['name']!r}")
    _delete(row["id"])


def share_model(user: User | str, model: str | int, visibility: str) -> ModelRow:
    """Make the user's model ``team`` (everyone may evaluate it, predict with it and use it as a base) or
    ``private`` again."""
    from core.store.models import get_model_by_id, set_visibility

    row = get(user, model)
    require_owner(user, row, f"Model {row['name']!r}")
    set_visibility(row["id"], check_visibility(visibility))
    return get_model_by_id(row["id"])


def multi_label(row: Mapping[str, Any]) -> bool:
    """Whether the classifier is multi-label (logreg: independent sigmoids) rather than softmax."""
    return str((row.get("params") or {}).get("logreg", 0)).strip().lower() in {"1", "true", "yes"}


def open_images(paths: Sequence[str]):
    """The images at ``paths`` as RGB PIL images."""
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def _batched(loaded, paths: Sequence[str], fn: str, progress: Progress | None, what: str):
    parts = []
    for start in range(0, len(paths), BATCH):
        images = open_images(paths[start:start + BATCH])
        parts.append(getattr(loaded, fn)(images))
        if progress:
            progress(min(1.0, (start + len(images)) / max(1, len(paths))), f"{what} {start + len(images)}/{len(paths)}")
    return parts


# ------------------------------------------------------------------------------------------------ cache


def _cache_files(row: ModelRow) -> tuple[Path, Path]:
    folder = Path(row["path"])
    return folder / "evaluation.json", folder / "evaluation.npz"


def _cache_key(row: ModelRow, dataset: DatasetRow) -> dict:
    stat = weights_file(row).stat()
    return {"eval_version": EVAL_VERSION, "dataset_id": dataset["id"], "dataset_version": dataset["version"],
            "weights_mtime_ns": stat.st_mtime_ns, "weights_size": stat.st_size}


def cached(row: ModelRow) -> Evaluation | None:
    """The cached evaluation of this model when it is still current, else None."""
    jf, _ = _cache_files(row)
    if not jf.is_file():
        return None
    try:
        data = json.loads(jf.read_text())
    except (OSError, ValueError):
        return None
    dataset = _dataset_or_none(row)
    if dataset is None:
        return data  # the dataset is gone: the last evaluation is all there is
    return data if data.get("cache_key") == _cache_key(row, dataset) else None


def arrays(row: ModelRow) -> dict[str, np.ndarray]:
    """The raw arrays behind the cached evaluation (``y_true``/``probs`` or ``embeddings``), evaluating if needed."""
    _, nf = _cache_files(row)
    if cached(row) is None or not nf.is_file():
        evaluate(row["owner"], row["id"])
    with np.load(nf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _dataset_or_none(row: ModelRow) -> DatasetSummary | None:
    from core.store import datasets as ds

    dataset_id = row["dataset_id"]
    if dataset_id is None:
        return None
    try:
        return ds.get_dataset_by_id(dataset_id)
    except UserError:
        return None


# ------------------------------------------------------------------------------------------------ evaluate


def evaluate(user: User | str, model: str | int, *, refresh: bool = False, threshold: float = 0.5,
             progress: Progress | None = None) -> Evaluation:
    """Every figure for the model on its dataset's held-out split (test when present, else val), cached.

    Raises UserError when the dataset is gone, the split is empty, or the weights cannot be read.
    """
    row = get(user, model)
    dataset = _dataset_or_none(row)
    if dataset is not None and not can_see(user, dataset):  # its images are not the user's to see
        raise UserError(f"model {row['name']!r}: its dataset is not shared with you, so its evaluation (which shows "
                        "the dataset's images) is not available")
    if not refresh:
        hit = cached(row)
        if hit is not None and (hit["kind"] != "classifier" or hit["threshold"] == threshold):
            return hit
        if hit is not None:
            return at_threshold(row, hit, threshold)
    if dataset is None:
        raise UserError(f"model {row['name']!r}: its dataset was deleted, so it cannot be evaluated again")
    loaded = load_model(row)
    if row["kind"] == "classifier":
        result, arrs = _evaluate_classifier(row, dataset, loaded, threshold, progress)
    elif row["kind"] == "embedder":
        result, arrs = _evaluate_embedder(row, dataset, loaded, progress)
    elif row["kind"] == "detector":
        result, arrs = _evaluate_detector(row, dataset, loaded, progress)
    else:
        raise UserError(f"model {row['name']!r}: unknown kind {row['kind']!r}")
    result.update({
        "model": {k: row[k] for k in ("id", "name", "kind", "template", "dataset_id", "dataset_version")},
        "dataset": {"id": dataset["id"], "name": dataset["name"], "version": dataset["version"]},
        "cache_key": _cache_key(row, dataset),
    })
    jf, nf = _cache_files(row)
    suffix = f".{os.getpid()}.{threading.get_ident()}.tmp"  # atomic replace: a concurrent reader sees old or new
    with open(nf.with_name(nf.name + suffix), "wb") as fh:
        # mypy matches **arrs against savez_compressed's allow_pickle: bool too; every value here is an array
        np.savez_compressed(fh, **arrs)  # type: ignore[arg-type]
    nf.with_name(nf.name + suffix).replace(nf)
    jf.with_name(jf.name + suffix).write_text(json.dumps(result, default=float))
    jf.with_name(jf.name + suffix).replace(jf)
    return result


def _labelled(row: ModelRow, records: list[dict]) -> tuple[list[dict], int]:
    """Records with at least one label among the model's concepts, and how many were left out."""
    known = set(row["concepts"])
    keep = [r for r in records if known.intersection(r["labels"])]
    return keep, len(records) - len(keep)


def _evaluate_classifier(row: ModelRow, dataset: DatasetRow, loaded, threshold: float,
                         progress: Progress | None) -> tuple[Evaluation, dict[str, np.ndarray]]:
    from core.store import datasets as ds

    split = ds.eval_split(dataset["id"])
    records, skipped = _labelled(row, ds.dataset_records(dataset["id"], split))
    if not records:
        raise UserError(f"model {row['name']!r}: the {split} split of dataset {dataset['name']!r} has no image "
                        f"labelled with the model's concepts; set a validation split on the Datasets page")
    concepts = list(row["concepts"])
    probs = np.concatenate(_batched(loaded, [r["path"] for r in records], "predict", progress, "evaluating"))
    y_true = m.multi_hot([r["labels"] for r in records], concepts)
    figures = m.classifier_metrics(y_true, probs, concepts, multi_label=multi_label(row), threshold=threshold)
    for miss in figures["misclassified"]:
        rec = records[miss["index"]]
        miss.update({"item_id": rec["item_id"], "path": rec["path"], "labels": rec["labels"]})
    result: Evaluation = {
        **figures, "kind": "classifier", "split": split, "skipped_unlabelled": skipped, "multi_label": multi_label(row),
        "concepts": concepts,
        "rows": [{"item_id": r["item_id"], "path": r["path"], "labels": r["labels"]} for r in records]}
    return result, {"y_true": y_true, "probs": probs.astype(np.float32)}


def _evaluate_embedder(row: ModelRow, dataset: DatasetRow, loaded,
                       progress: Progress | None) -> tuple[Evaluation, dict[str, np.ndarray]]:
    from core.store import datasets as ds

    split = ds.eval_split(dataset["id"])
    records = [r for r in ds.dataset_records(dataset["id"]) if r["labels"]]
    queries = [i for i, r in enumerate(records) if r["split"] == split]
    gallery = [i for i, r in enumerate(records) if r["split"] != split]
    if not queries or not gallery:
        raise UserError(f"model {row['name']!r}: dataset {dataset['name']!r} needs labelled images both in the "
                        f"{split} split (queries) and outside it (gallery) to evaluate retrieval")
    paths = [r["path"] for r in records]
    emb = np.concatenate(_batched(loaded, paths, "embed", part(progress, 0.0, 0.5), "embedding"))
    labels = [r["labels"] for r in records]
    figures = m.embedder_metrics(emb[queries], [labels[i] for i in queries], emb[gallery], [labels[i] for i in gallery])
    baseline = _general_baseline(dataset, records, queries, gallery, part(progress, 0.5, 1.0))
    rng = np.random.default_rng(0)
    shown = np.arange(len(records))
    if len(shown) > m.MAP_POINTS:
        shown = np.sort(rng.choice(shown, m.MAP_POINTS, replace=False))
    coords, method = m.embedding_map(emb[shown])
    result: Evaluation = {
        **figures, "kind": "embedder", "split": split, "map_method": method, "baseline": baseline,
        "map": [{"x": float(x), "y": float(y), "item_id": records[i]["item_id"], "path": records[i]["path"],
                 "concept": records[i]["labels"][0], "labels": records[i]["labels"], "split": records[i]["split"]}
                for (x, y), i in zip(coords.tolist(), shown.tolist())],
    }
    return result, {"embeddings": emb.astype(np.float32), "item_ids": np.array([r["item_id"] for r in records])}


def _general_baseline(dataset: DatasetRow, records: list[dict], queries: list[int], gallery: list[int],
                      progress: Progress | None) -> EmbedderBaseline:
    """The general embedder's retrieval figures on the same queries and gallery: what training bought. Its vectors
    come from the dataset's embeddings cache (``core.data.quality.embeddings``: per dataset version and embedder, so
    every embedder of the dataset and the quality check share them)."""
    from core.data import quality
    from core.models import GENERAL
    from core.search.embed import model_label

    def report(done: int, total: int, _rate: float) -> None:
        report_count(progress, done, total, "embedding with the general embedder (baseline)")

    found = quality.embeddings(dataset, records, GENERAL, progress=report)
    assert found is not None  # nothing asks it to stop
    emb = found[1]
    labels = [r["labels"] for r in records]
    figures = m.embedder_metrics(emb[queries], [labels[i] for i in queries], emb[gallery], [labels[i] for i in gallery])
    return {"model": GENERAL, "label": model_label(GENERAL), "recall_at_1": figures["recall_at_1"],
            "recall_at_5": figures["recall_at_5"], "recall_at_k": figures["recall_at_k"],
            "map_at_r": figures["map_at_r"]}


def box_arrays(boxes: Sequence[dict], concepts: Sequence[str]) -> dict[str, np.ndarray]:
    """Box dicts ({"concept", "x", "y", "w", "h"[, "score"]}) as x1y1x2y2 arrays with concept indices."""
    index = {c: i for i, c in enumerate(concepts)}
    kept = [b for b in boxes if b.get("concept") in index]
    xyxy = np.array([[b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]] for b in kept], dtype=float).reshape(-1, 4)
    return {"boxes": xyxy, "labels": np.array([index[b["concept"]] for b in kept], dtype=int),
            "scores": np.array([float(b.get("score", 1.0)) for b in kept], dtype=float)}


def _evaluate_detector(row: ModelRow, dataset: DatasetRow, loaded,
                       progress: Progress | None) -> tuple[Evaluation, dict[str, np.ndarray]]:
    from core.store import datasets as ds

    split = ds.eval_split(dataset["id"])
    records = [r for r in ds.dataset_records(dataset["id"], split) if r["boxes"]]
    if not records:
        raise UserError(f"model {row['name']!r}: the {split} split of dataset {dataset['name']!r} has no boxes")
    concepts = list(row["concepts"])
    preds = [p["boxes"] for part in _batched(loaded, [r["path"] for r in records], "predict", progress, "detecting")
             for p in part]  # LoadedModel.predict gives one {"boxes": [...]} per image
    found = [box_arrays(p, concepts) for p in preds]
    truth = [box_arrays(r["boxes"], concepts) for r in records]
    figures = m.detector_metrics(found, truth, concepts)
    confusion = m.detection_confusion(found, truth, concepts)
    result: Evaluation = {
        **figures, "kind": "detector", "split": split, "concepts": concepts,
        "detection_confusion": confusion["per_concept"],
        "samples": [{"item_id": r["item_id"], "path": r["path"], "truth": r["boxes"], "predicted": p, **kinds}
                    for r, p, kinds in zip(records, preds, confusion["images"], strict=True)]}
    return result, {"n": np.array([len(records)])}


# ------------------------------------------------------------------------------------------------ views

ANY_ERROR = "any error"
NO_ERROR = "no error"


def detector_samples(result: Evaluation, concept: str | None = None, error: str | None = None) -> list[dict]:
    """A detector evaluation's images with ``concept`` among their boxes (truth or predicted) and the kind of
    ``error`` asked for: one of metrics.ERROR_KINDS, ANY_ERROR or NO_ERROR (None: every image)."""
    allowed = (*m.ERROR_KINDS, ANY_ERROR, NO_ERROR)
    if error is not None and error not in allowed:
        raise UserError(f"error must be one of {', '.join(allowed)}, got {error!r}")
    out = []
    for s in result["samples"]:
        kinds = s.get("errors") or []
        if concept is not None and concept not in s.get("concepts", []):
            continue
        wanted = {None: True, ANY_ERROR: bool(kinds), NO_ERROR: not kinds}.get(error, error in kinds)
        if not wanted:
            continue
        out.append(s)
    return out



def at_threshold(row: ModelRow, result: Evaluation, threshold: float) -> Evaluation:
    """A cached classifier evaluation with its threshold-dependent figures recomputed at ``threshold``."""
    a = arrays(row)
    concepts = list(row["concepts"])
    wrong = m.misclassified(a["y_true"], a["probs"], concepts, result["multi_label"], threshold)
    for miss in wrong:
        miss.update(result["rows"][miss["index"]])
    return {**result, "threshold": float(threshold), "misclassified": wrong,
            "per_concept": m.per_concept_table(a["y_true"], a["probs"], concepts, float(threshold))}


def per_concept_at(row: ModelRow, threshold: float) -> list[ConceptFigures]:
    """The classifier's per-concept table at another threshold, from the cached probabilities (no network run)."""
    a = arrays(row)
    return m.per_concept_table(a["y_true"], a["probs"], list(row["concepts"]), float(threshold))


def cell_items(row: ModelRow, true_concept: str, predicted_concept: str) -> list[dict]:
    """The evaluation items in one confusion-matrix cell: labelled ``true_concept``, top prediction the other."""
    result = evaluate(row["owner"], row["id"])
    a = arrays(row)
    concepts = list(row["concepts"])
    t, p = concepts.index(true_concept), concepts.index(predicted_concept)
    top = a["probs"].argmax(axis=1)
    hits = np.nonzero((a["y_true"][:, t] > 0) & (top == p))[0]
    return [{**result["rows"][i], "probability": float(a["probs"][i, p])} for i in hits.tolist()]


def summary(result: Evaluation) -> dict[str, Any]:
    """The headline figures of an evaluation, for tables and comparisons."""
    kind = result["kind"]
    if kind == "classifier":
        f1s = [r["f1"] for r in result["per_concept"]]
        return {"accuracy": result["accuracy"], "top5": result["top5"], "macro_roc_auc": result["macro_roc_auc"],
                "macro_f1": float(np.mean(f1s)) if f1s else None, "items": result["items"]}
    if kind == "embedder":
        return {"recall_at_1": result["recall_at_1"], "recall_at_5": result["recall_at_5"],
                "map_at_r": result["map_at_r"], "queries": result["queries"]}
    return {"map": result["map"], "ap50": result["ap50"], "ap75": result["ap75"],
            **{k: result.get(k) for k in ("map_small", "map_medium", "map_large")}, "images": result["images"]}


def compare(user: User | str, models: Sequence[str | int]) -> dict:
    """Two or more models of one kind trained on one dataset: headline table and curves to overlay; detectors also
    their AP per concept side by side (``per_concept``: one row per concept, AP@[.5:.95] and AP50 of each model).

    The models may come from different versions of the dataset (before and after fixing labels, "retrain on the fixed
    version"): every one is evaluated on the dataset as it is now, so the figures compare like with like;
    ``trained_on_versions`` lists the versions when they differ (empty when they are the same)."""
    rows = [get(user, name) for name in models]
    if len(rows) < 2:
        raise UserError("compare: choose at least two models")
    kinds = {r["kind"] for r in rows}
    if len(kinds) > 1:
        raise UserError(f"compare: models must be of one kind, got {', '.join(sorted(kinds))}")
    if len({r["dataset_id"] for r in rows}) > 1:
        names = "; ".join(f"{r['name']}: dataset {r['dataset_id']} v{r['dataset_version']}" for r in rows)
        raise UserError(f"compare: models must be trained on one dataset, in any of its versions ({names})")
    versions = sorted({int(r["dataset_version"] or 0) for r in rows})
    table, curves = [], []
    for r in rows:
        res = evaluate(user, r["id"])
        table.append({"model": r["name"], "template": r["template"], "trained on version": r["dataset_version"],
                      **summary(res)})
        if res["kind"] == "classifier" and "__micro__" in res["curves"]:
            curves.append({"model": r["name"], **res["curves"]["__micro__"]})
        elif res["kind"] == "embedder":
            curves.append({"model": r["name"], "recall_at_k": res["recall_at_k"]})
        elif res["kind"] == "detector":
            curves.append({"model": r["name"], "per_concept_ap": res["per_concept_ap"],
                           "per_concept_ap50": res["per_concept_ap50"]})
    out = {"kind": kinds.pop(), "table": table, "curves": curves,
           "trained_on_versions": versions if len(versions) > 1 else []}
    if out["kind"] == "detector":
        concepts = list(dict.fromkeys(c for r in rows for c in r["concepts"]))
        out["per_concept"] = [{"concept": c, **{f"{m['model']} {label}": m[key].get(c) for m in curves
                                                for key, label in (("per_concept_ap", "AP"),
                                                                   ("per_concept_ap50", "AP50"))}}
                              for c in concepts]
    return out


# ------------------------------------------------------------------------------------------------ registry table

HEADLINE_METRICS = ("top1", "top5", "recall_at_1", "map", "val_loss", "map50", "ap50")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    return f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60} min"


def _train_times(model: ModelRow) -> TrainTimes:
    """How long ``model`` (a model row) took to train: ``wall_seconds``, the wall time of the job that trained it
    (None when it was trained in the foreground or its job is gone), ``epochs_seconds``, the time inside its epochs,
    and ``before_seconds``, the rest: start-up, decoding images or computing backbone features, evaluation and
    saving. A frozen-backbone run's epochs take seconds while its features take most of the wait."""
    from core.store import jobs as jstore

    epochs = model.get("train_seconds")
    wall = None
    run = str(model.get("run") or "")
    if run.isdigit():
        try:
            job = jstore.get_job(int(run))
        except UserError:
            job = None
        started, finished = (job.get("started_at"), job.get("finished_at")) if job else (None, None)
        if job and job["type"] == "train" and started is not None and finished is not None:
            wall = max(0.0, finished - started)
    before = max(0.0, wall - epochs) if wall is not None and epochs is not None else None
    return {"wall_seconds": wall, "epochs_seconds": epochs, "before_seconds": before}


def train_time(user: User | str, model: str | int) -> TrainTime:
    """How long a model ``user`` sees took to train (``_train_times``), with ``text``, a sentence for its details."""
    row = get(user, model)
    t = _train_times(row)
    epochs = (row.get("metrics") or {}).get("epochs")
    inside = f"{_duration(t['epochs_seconds'])} in {epochs} epoch(s)" if epochs else _duration(t["epochs_seconds"])
    if t["wall_seconds"] is None:
        return {**t, "text": f"Trained in the foreground: {inside} of training."}
    return {**t, "text": f"Trained in {_duration(t['wall_seconds'])} (its job's wall time): {inside}, and "
                         f"{_duration(t['before_seconds'])} for start-up, decoding images or computing backbone "
                         "features, evaluation and saving."}


def head_tuning(user: User | str, model: str | int) -> HeadTuning | None:
    """How a model ``user`` sees chose its head's settings (``tune_head``): its C (a fitted head) or learning rate, the
    grid, each candidate's held-out loss and top-1, and ``text``, a sentence for its details; None when it did not
    tune."""
    from core.models.io import read_config
    from core.training.tuning import LOGISTIC, describe

    row = get(user, model)
    try:
        tuned = read_config(row["path"]).get("head_tuning")
    except UserError:
        return None
    if not tuned:
        return None
    line = describe(tuned)
    line = f"{line[0].upper()}{line[1:]}"
    if tuned.get("method") == LOGISTIC:
        best = "the lowest held-out loss" if tuned.get("criterion") == "val_loss" else "the best held-out top-1"
        how = (f"{best} in {tuned['folds']}-fold cross-validation on {tuned['fit_items']} training images"
               if tuned.get("folds") else "too few training images to cross-validate")
        return {**tuned, "text": f"{line}, {how}, then fitted on all {tuned['fit_items']} (lrate and epochs not "
                                 "used)."}
    return {**tuned, "text": f"{line}, the lowest loss on {tuned['val_items']} training images held out (trained on "
                             f"{tuned['fit_items']}), then trained on the whole training split with it."}


def registry_rows(user: User | str) -> list[dict]:
    """Every model ``user`` sees as a table row: owner, sharing, template, dataset version, hyperparameters, when,
    how long (its job's wall time, else its epochs' time), metrics. A dataset the user may not see is named "not
    shared"."""
    import time

    from core.store import datasets as ds

    user = as_user(user)
    names: dict[int, str] = {d["id"]: d["name"] if d["owner"] == user.name else f"{d['owner']}/{d['name']}"
                             for d in ds.list_datasets(user)}
    out = []
    for r in list_models(user):
        metrics = r.get("metrics") or {}
        gone = "deleted" if _dataset_or_none(r) is None else "not shared"
        dataset_id = r["dataset_id"]
        out.append({
            "id": r["id"], "name": r["name"], "owner": r["owner"], "visibility": r["visibility"], "kind": r["kind"],
            "template": r["template"],
            "dataset": f"{names.get(dataset_id, gone)} v{r['dataset_version']}" if dataset_id else "-",
            "trained": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])),
            "train time": _duration(_train_times(r)["wall_seconds"] or r.get("train_seconds")),
            **{k: metrics[k] for k in HEADLINE_METRICS if isinstance(metrics.get(k), (int, float))},
            "hyperparameters": ", ".join(f"{k}={v}" for k, v in sorted((r.get("params") or {}).items())),
        })
    return out
