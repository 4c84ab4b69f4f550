"""Evaluation figures computed from arrays: classifiers, embedders and detectors.

Pure functions on numpy arrays (no database, no model), so every figure can be checked against a direct computation.
Classifier figures come from scikit-learn; retrieval neighbours from ``sklearn.neighbors``; detector figures from
pycocotools' COCOeval (the reference implementation of COCO's mAP).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.records import ClassifierFigures, ConceptFigures, DetectorFigures, EmbedderFigures, Misclassification


def _skm() -> Any:
    """scikit-learn's metrics, imported on first use: importing them takes about a second (scipy), which every page
    that merely imports the evaluation service would otherwise pay on a server's first visit."""
    from sklearn import metrics

    return metrics


MAX_CURVE_POINTS = 200  # points kept per PR/ROC curve in the cached JSON; the curves' shapes survive
MAP_POINTS = 2000  # most items drawn on the 2-D embedding map


def multi_hot(labels: Sequence[Sequence[str]], concepts: Sequence[str]) -> np.ndarray:
    """Items' label lists as an (N, C) 0/1 matrix in ``concepts`` order; labels outside ``concepts`` are dropped."""
    index = {c: i for i, c in enumerate(concepts)}
    y = np.zeros((len(labels), len(concepts)), dtype=np.int8)
    for row, item_labels in enumerate(labels):
        for name in item_labels:
            if name in index:
                y[row, index[name]] = 1
    return y


def _thin(*arrays: np.ndarray, limit: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """Keep at most ``limit`` evenly spread points (always the first and last) of parallel curve arrays."""
    n = len(arrays[0])
    if n <= limit:
        keep = np.arange(n)
    else:
        keep = np.unique(np.linspace(0, n - 1, limit).round().astype(int))
    return [np.asarray(a, dtype=float)[keep].round(6).tolist() for a in arrays]


def per_concept_table(y_true: np.ndarray, probs: np.ndarray, concepts: Sequence[str],
                      threshold: float) -> list[ConceptFigures]:
    """Per concept at ``threshold``: labelled and predicted counts, TP, FP, FN, precision, recall, F1.

    A concept counts as predicted for an item when its probability is at least ``threshold``.
    """
    y_pred = (np.asarray(probs, dtype=np.float64) >= float(threshold)).astype(np.int8)
    mcm = _skm().multilabel_confusion_matrix(y_true, y_pred, labels=list(range(len(concepts))))
    precision, recall, f1, support = _skm().precision_recall_fscore_support(
        y_true, y_pred, average=None, labels=list(range(len(concepts))), zero_division=0
    )
    rows: list[ConceptFigures] = []
    for i, name in enumerate(concepts):
        _tn, fp, fn, tp = (int(v) for v in mcm[i].ravel())
        rows.append({
            "concept": name, "labelled": int(support[i]), "predicted": int(y_pred[:, i].sum()),
            "tp": tp, "fp": fp, "fn": fn,
            "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
        })
    return rows


def best_f1_thresholds(y_true: np.ndarray, probs: np.ndarray, concepts: Sequence[str]) -> dict[str, dict | None]:
    """For each concept the threshold that maximises F1 on these items, and that F1 (None without positives)."""
    out: dict[str, dict | None] = {}
    for i, name in enumerate(concepts):
        if y_true[:, i].sum() == 0:
            out[name] = None
            continue
        precision, recall, thresholds = _skm().precision_recall_curve(y_true[:, i], probs[:, i])
        p, r = precision[:-1], recall[:-1]  # the last point has no threshold
        f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
        best = int(np.argmax(f1))
        out[name] = {"threshold": float(thresholds[best]), "f1": float(f1[best])}
    return out


def _top1_truth(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """One true index per item for single-label figures: the labelled concept the model ranks highest."""
    masked = np.where(y_true > 0, probs, -np.inf)
    return masked.argmax(axis=1)


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of items whose top-k predictions include a labelled concept (sklearn's top_k_accuracy_score).

    For an item with several labels the true class is the labelled concept ranked highest, so the figure is
    "any label within the top k", the usual reading for multi-label sets.
    """
    n_classes = probs.shape[1]
    if k >= n_classes:
        return 1.0
    truth = _top1_truth(y_true, probs)
    if n_classes == 2:
        return float(_skm().top_k_accuracy_score(truth, probs[:, 1], k=k, labels=[0, 1]))
    return float(_skm().top_k_accuracy_score(truth, probs, k=k, labels=list(range(n_classes))))


def macro_roc_auc(y_true: np.ndarray, probs: np.ndarray) -> tuple[float | None, list[int]]:
    """One-vs-rest ROC AUC averaged over concepts; concepts without both positives and negatives are left out.

    Returns the AUC (None when no concept qualifies) and the indices of the concepts used.
    """
    positives = y_true.sum(axis=0)
    used = [i for i in range(y_true.shape[1]) if 0 < positives[i] < len(y_true)]
    if not used:
        return None, []
    return float(_skm().roc_auc_score(y_true[:, used], probs[:, used], average="macro")), used


def confusion(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Confusion matrix of true concept (rows) against the top prediction (columns), counts and row-normalised.

    An item with several labels adds one row entry per label.
    """
    n_classes = probs.shape[1]
    item_rows, true_cols = np.nonzero(y_true)
    pred = probs.argmax(axis=1)[item_rows]
    counts = _skm().confusion_matrix(true_cols, pred, labels=list(range(n_classes)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        normalised = _skm().confusion_matrix(true_cols, pred, labels=list(range(n_classes)), normalize="true")
    return {"counts": counts.tolist(), "normalised": np.nan_to_num(normalised).round(6).tolist()}


def curves(y_true: np.ndarray, probs: np.ndarray, concepts: Sequence[str]) -> dict[str, dict]:
    """Precision-recall and ROC curves per concept (concepts with positives and negatives), plus the micro average."""
    out: dict[str, dict] = {}
    columns = [(name, y_true[:, i], probs[:, i]) for i, name in enumerate(concepts)]
    columns.append(("__micro__", y_true.ravel(), probs.ravel()))
    for name, truth, score in columns:
        if truth.sum() == 0 or truth.sum() == len(truth):
            continue
        precision, recall, _ = _skm().precision_recall_curve(truth, score)
        fpr, tpr, _ = _skm().roc_curve(truth, score)
        recall_t, precision_t = _thin(recall, precision)
        fpr_t, tpr_t = _thin(fpr, tpr)
        out[name] = {
            "pr": {"recall": recall_t, "precision": precision_t,
                   "ap": float(_skm().average_precision_score(truth, score))},
            "roc": {"fpr": fpr_t, "tpr": tpr_t, "auc": float(_skm().roc_auc_score(truth, score))},
        }
    return out


def misclassified(y_true: np.ndarray, probs: np.ndarray, concepts: Sequence[str], multi_label: bool,
                  threshold: float = 0.5) -> list[Misclassification]:
    """Items the model gets wrong, worst first.

    Softmax models: the top prediction is not among the labels. Multi-label (logreg) models: the set of concepts at or
    above ``threshold`` differs from the labels. Each entry: index (row), true and predicted concepts with
    probabilities, and the model's confidence in its wrong answer.
    """
    out: list[Misclassification] = []
    for row in range(len(y_true)):
        truth = set(np.nonzero(y_true[row])[0].tolist())
        if multi_label:
            predicted = set(np.nonzero(probs[row] >= threshold)[0].tolist())
            wrong = predicted != truth
        else:
            predicted = {int(probs[row].argmax())}
            wrong = not (predicted & truth)
        if not wrong:
            continue
        out.append({
            "index": row,
            "true": [{"name": concepts[i], "probability": float(probs[row, i])} for i in sorted(truth)],
            "predicted": [{"name": concepts[i], "probability": float(probs[row, i])}
                          for i in sorted(predicted, key=lambda i: -probs[row, i])],
            "confidence": float(max((probs[row, i] for i in predicted - truth), default=0.0)),
        })
    out.sort(key=lambda m: -m["confidence"])
    return out


def classifier_metrics(y_true: np.ndarray, probs: np.ndarray, concepts: Sequence[str], multi_label: bool = False,
                       threshold: float = 0.5) -> ClassifierFigures:
    """Every classifier figure for one evaluation set.

    Args:
        y_true: (N, C) 0/1 labels in the model's concept order.
        probs: (N, C) probabilities (softmax rows, or independent sigmoids for logreg models).
        concepts: concept names, the model's output order.
        multi_label: True for logreg (sigmoid) models.
        threshold: the prediction threshold for the per-concept table and the multi-label misclassified list.
    """
    y_true = np.asarray(y_true, dtype=np.int8)
    probs = np.asarray(probs, dtype=np.float64)
    if y_true.shape != probs.shape or y_true.ndim != 2:
        raise ValueError(f"labels {y_true.shape} and probabilities {probs.shape} must both be (items, concepts)")
    if len(y_true) == 0:
        raise ValueError("no evaluation items")
    if (y_true.sum(axis=1) == 0).any():
        raise ValueError("every evaluation item needs at least one label among the model's concepts")
    truth = _top1_truth(y_true, probs)
    auc, auc_used = macro_roc_auc(y_true, probs)
    return {
        "items": int(len(y_true)),
        "accuracy": float(_skm().accuracy_score(truth, probs.argmax(axis=1))),
        "top5": top_k_accuracy(y_true, probs, 5),
        "macro_roc_auc": auc,
        "roc_auc_concepts": [concepts[i] for i in auc_used],
        "threshold": float(threshold),
        "per_concept": per_concept_table(y_true, probs, concepts, threshold),
        "best_f1": best_f1_thresholds(y_true, probs, concepts),
        "confusion": confusion(y_true, probs),
        "curves": curves(y_true, probs, concepts),
        "misclassified": misclassified(y_true, probs, concepts, multi_label, threshold),
    }


# ------------------------------------------------------------------------------------------------ embedders


def _neighbours(queries: np.ndarray, gallery: np.ndarray, k: int) -> np.ndarray:
    """Indices of each query's ``k`` nearest gallery rows by cosine distance (sklearn brute force)."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=min(k, len(gallery)), metric="cosine", algorithm="brute")
    nn.fit(gallery)
    return nn.kneighbors(queries, return_distance=False)


def _relevance(query_labels: Sequence[Sequence[str]], gallery_labels: Sequence[Sequence[str]]) -> np.ndarray:
    """(Q, G) boolean: the gallery item shares at least one label with the query."""
    concepts = sorted({c for labels in list(query_labels) + list(gallery_labels) for c in labels})
    q = multi_hot(query_labels, concepts).astype(np.int32)
    g = multi_hot(gallery_labels, concepts).astype(np.int32)
    return (q @ g.T) > 0


def embedder_metrics(query_emb: np.ndarray, query_labels: Sequence[Sequence[str]], gallery_emb: np.ndarray,
                     gallery_labels: Sequence[Sequence[str]],
                     ks: Sequence[int] = tuple(range(1, 11))) -> EmbedderFigures:
    """Retrieval figures: queries against a separate gallery, relevant = shares a label.

    recall@k: share of queries with at least one relevant item among their k nearest. mAP@R (Musgrave et al. 2020):
    with R the query's number of relevant gallery items, the mean over its top R neighbours of precision@i counted
    at relevant positions, divided by R. Queries with no relevant gallery item are left out (and counted).
    """
    query_emb = np.asarray(query_emb, dtype=np.float32)
    gallery_emb = np.asarray(gallery_emb, dtype=np.float32)
    if len(query_emb) == 0 or len(gallery_emb) == 0:
        raise ValueError("retrieval needs at least one query and one gallery item")
    relevant = _relevance(query_labels, gallery_labels)
    r_counts = relevant.sum(axis=1)
    usable = r_counts > 0
    max_k = int(max(max(ks), r_counts.max(initial=0)))
    order = _neighbours(query_emb[usable], gallery_emb, max_k)
    rel_sorted = np.take_along_axis(relevant[usable], order, axis=1)  # (Q', K) relevance in rank order
    recall_at = {int(k): float(rel_sorted[:, :k].any(axis=1).mean()) if usable.any() else None for k in ks}
    ap_r = []
    for row, r in zip(rel_sorted, r_counts[usable]):
        hits = row[:r]
        precision_at_i = np.cumsum(hits) / np.arange(1, r + 1)
        ap_r.append(float((precision_at_i * hits).sum() / r))
    return {
        "queries": int(len(query_emb)), "gallery": int(len(gallery_emb)),
        "queries_without_relevant": int((~usable).sum()),
        "recall_at_1": recall_at.get(1), "recall_at_5": recall_at.get(5),
        "recall_at_k": {str(k): v for k, v in recall_at.items()},
        "map_at_r": float(np.mean(ap_r)) if ap_r else None,
    }


def embedding_map(embeddings: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of the embeddings: UMAP when the umap package is installed, else PCA (sklearn)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) < 3:
        return np.zeros((len(embeddings), 2), dtype=np.float32), "none"
    try:
        import umap  # optional

        coords = umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(embeddings)
        return np.asarray(coords, dtype=np.float32), "umap"
    except ImportError:
        from sklearn.decomposition import PCA

        coords = PCA(n_components=2, random_state=seed).fit_transform(embeddings)
        return coords.astype(np.float32), "pca"


# ------------------------------------------------------------------------------------------------ detectors

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.96, 0.05), 2)  # COCO's, as pycocotools sets them
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's interpolated recall points: the PR curves' x axis
CONFUSION_IOU = 0.5  # a detection and a ground-truth box of another concept overlapping this much: "wrong concept"


def _coco(images: int, concepts: Sequence[str], rows: Sequence[tuple[int, int, np.ndarray, float | None]]):
    """A pycocotools COCO object holding boxes: rows of (image id, concept index, x1y1x2y2, score or None)."""
    from pycocotools.coco import COCO

    anns = []
    for n, (image, label, (x1, y1, x2, y2), score) in enumerate(rows, start=1):
        w, h = float(x2 - x1), float(y2 - y1)
        ann = {"id": n, "image_id": image, "category_id": label + 1, "bbox": [float(x1), float(y1), w, h],
               "area": w * h, "iscrowd": 0}
        if score is not None:
            ann["score"] = float(score)
        anns.append(ann)
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in range(images)], "annotations": anns,
                    "categories": [{"id": i + 1, "name": str(c)} for i, c in enumerate(concepts)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _rows(items: Sequence[dict], scored: bool) -> list[tuple[int, int, np.ndarray, float | None]]:
    out: list[tuple[int, int, np.ndarray, float | None]] = []
    for image, item in enumerate(items):
        boxes = np.asarray(item["boxes"], dtype=float).reshape(-1, 4)
        labels = np.asarray(item["labels"], dtype=int).reshape(-1)
        scores = np.asarray(item["scores"], dtype=float).reshape(-1) if scored else [None] * len(boxes)
        out += [(image, int(lb), b, None if s is None else float(s)) for b, lb, s in zip(boxes, labels, scores)]
    return out


def _stat(x: float) -> float | None:
    """A pycocotools figure, None where it says -1 (no ground truth to measure against)."""
    return None if x < 0 else float(x)


def detector_metrics(predictions: Sequence[dict], targets: Sequence[dict],
                     concepts: Sequence[str]) -> DetectorFigures:
    """COCO detection figures from pycocotools' COCOeval (bbox, areas and 100 detections per image as COCO):
    mAP@[.5:.95], AP50, AP75, mAP of small / medium / large boxes, AP per concept and a precision-recall curve per
    concept at IoU 0.5 (precision at COCO's 101 recall points; recall points beyond the concept's reach have
    precision 0).

    Args:
        predictions: per image {"boxes": (n, 4) x1y1x2y2, "scores": (n,), "labels": (n,) concept indices}.
        targets: per image {"boxes": (m, 4) x1y1x2y2, "labels": (m,)}.
        concepts: names for the label indices.
    Concepts without ground-truth boxes get AP None and are left out of the means, as in COCO.
    """
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    truth = _coco(len(targets), concepts, _rows(targets, scored=False))
    found = _coco(len(targets), concepts, _rows(predictions, scored=True))
    ev = COCOeval(truth, found, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [_stat(float(x)) for x in ev.stats]
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (IoU thresholds, recall points, concepts): all areas, 100 dets
    per_concept: dict[str, float | None] = {}
    per_concept_50: dict[str, float | None] = {}
    pr: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(concepts):
        p = precision[:, :, k]
        per_concept[name] = float(p[p > -1].mean()) if (p > -1).any() else None
        per_concept_50[name] = float(p[0][p[0] > -1].mean()) if (p[0] > -1).any() else None
        if per_concept_50[name] is not None:
            pr[name] = {"recall": RECALL_POINTS.round(6).tolist(), "precision": p[0].round(6).tolist(),
                        "ap": per_concept_50[name]}
    return {
        "images": len(targets),
        "map": stats[0], "ap50": stats[1], "ap75": stats[2],
        "map_small": stats[3], "map_medium": stats[4], "map_large": stats[5],
        "per_concept_ap": per_concept,
        "per_concept_ap50": per_concept_50,
        "pr_curves": pr,
    }


ERROR_KINDS = ("wrong_concept", "background", "missed")  # what can go wrong with a box, as the gallery filters it


def detection_confusion(predictions: Sequence[dict], targets: Sequence[dict], concepts: Sequence[str],
                        iou: float = CONFUSION_IOU) -> dict[str, Any]:
    """Where each concept's detections and ground-truth boxes went, at IoU ``iou``.

    Per image and concept, detections in score order take the best free ground-truth box of their concept (COCO's
    greedy matching): "matched". A detection left over that overlaps a box of another concept by ``iou`` is
    "wrong_concept" (counted under its concept, with the other concept in ``confused_with``), else "background"; a
    ground-truth box no detection took is "missed".

    Returns {"per_concept": {name: {"matched", "wrong_concept", "background", "missed", "confused_with": {other: n}}},
    "images": [{"errors": sorted kinds, "concepts": sorted concept names involved}] per image}.
    """
    import torch
    from torchvision.ops import box_iou

    per: dict[str, dict[str, Any]] = {c: {"matched": 0, "wrong_concept": 0, "background": 0, "missed": 0,
                                          "confused_with": {}} for c in concepts}
    images = []
    for pred, target in zip(predictions, targets, strict=True):
        pb = torch.as_tensor(np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4))
        pl = np.asarray(pred["labels"], dtype=int).reshape(-1)
        ps = np.asarray(pred["scores"], dtype=float).reshape(-1)
        tb = torch.as_tensor(np.asarray(target["boxes"], dtype=np.float64).reshape(-1, 4))
        tl = np.asarray(target["labels"], dtype=int).reshape(-1)
        overlap = box_iou(pb, tb).numpy() if len(pb) and len(tb) else np.zeros((len(pb), len(tb)))
        taken = np.zeros(len(tb), dtype=bool)
        errors: set[str] = set()
        involved = {concepts[i] for i in np.concatenate([pl, tl]).tolist()}
        for d in np.argsort(-ps, kind="mergesort"):
            own = np.where((tl == pl[d]) & ~taken & (overlap[d] >= iou), overlap[d], -1.0)
            name = concepts[pl[d]]
            if len(own) and own.max() >= 0:
                taken[int(own.argmax())] = True
                per[name]["matched"] += 1
                continue
            other = np.where(tl != pl[d], overlap[d], -1.0)
            if len(other) and other.max() >= iou:
                per[name]["wrong_concept"] += 1
                confused = concepts[tl[int(other.argmax())]]
                per[name]["confused_with"][confused] = per[name]["confused_with"].get(confused, 0) + 1
                errors.add("wrong_concept")
            else:
                per[name]["background"] += 1
                errors.add("background")
        for g in np.flatnonzero(~taken):
            per[concepts[tl[g]]]["missed"] += 1
            errors.add("missed")
        images.append({"errors": sorted(errors), "concepts": sorted(involved)})
    return {"per_concept": per, "images": images}
