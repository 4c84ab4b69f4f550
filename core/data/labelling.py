"""Labelling the unlabelled images of a dataset: a trained model's suggestions, accepted in bulk above a confidence,
and "label these first", a ranking of the rest by uncertainty and diversity.

Suggestions come from a classifier the user sees, run on the dataset's images that have no label (its most probable
concept, or every concept at or above one half for a multi-label model; confidence: that probability, the lowest of
them for several). "Label these first" works without a trained model: a logistic regression fitted on the labelled
images' embeddings (cached per version, as the quality check caches them) says how unsure it is about each unlabelled
image (1 - the margin between its two most probable concepts), and a greedy pick favours images far (cosine) from
everything labelled or already picked, so that the list covers the data instead of repeating one hard case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from core.data import quality
from core.errors import UserError
from core.models import GENERAL
from core.progress import Progress
from core.search import embed as embedding
from core.store import datasets as ds_store
from core.users import User, require_owner

MAX_FIRST = 1000  # images one "label these first" list may hold


class LabelSuggestion(TypedDict):
    """A model's labels for an unlabelled item, with the probability it gives them."""

    item: int
    suggested: list[str]
    confidence: float


class FirstToLabel(TypedDict):
    """One image of the "label these first" list, best first: score = uncertainty x novelty at its pick."""

    item: int
    uncertainty: float
    novelty: float
    score: float
    guess: str | None  # the embeddings' logistic regression's most probable concept


def suggest_labels(user: User | str, dataset: str | int, model: str | int,
                   progress: Progress | None = None) -> list[LabelSuggestion]:
    """The classifier's labels for every unlabelled image of the dataset, most confident first."""
    from core.evaluation import service as models

    ds = ds_store.get_dataset(user, dataset)
    row = models.get(user, model)
    if row["kind"] != "classifier":
        raise UserError(f"model {row['name']!r} is a {row['kind']}; suggesting labels needs a classifier")
    todo = [r for r in ds_store.dataset_records(ds["id"]) if not r["labels"]]
    if not todo:
        return []
    loaded = models.load_model(row)
    probs = np.concatenate(models._batched(loaded, [r["path"] for r in todo], "predict", progress, "predicting"))
    concepts = list(row["concepts"])
    multi = models.multi_label(row)
    out: list[LabelSuggestion] = []
    for rec, p in zip(todo, probs):
        chosen = [int(i) for i in np.flatnonzero(p >= 0.5)] if multi else []
        chosen = chosen or [int(np.argmax(p))]
        out.append({"item": int(rec["item_id"]), "suggested": sorted(concepts[i] for i in chosen),
                    "confidence": round(float(min(p[i] for i in chosen)), 6)})
    out.sort(key=lambda s: (-s["confidence"], s["item"]))
    return out


def accept_suggested(user: User | str, dataset: str | int, suggestions: Sequence[LabelSuggestion],
                     min_confidence: float) -> tuple[int, int]:
    """Give every suggestion at or above ``min_confidence`` (0-1) to its item, if it is still unlabelled, in one new
    version of the user's dataset. Returns (version, how many items were labelled)."""
    from core.data.service import relabel_items

    ds = ds_store.get_dataset(user, dataset)
    require_owner(user, ds, f"Dataset {ds['name']!r}")
    try:
        floor = float(min_confidence)
    except (TypeError, ValueError):
        floor = float("nan")
    if not 0.0 <= floor <= 1.0:
        raise UserError(f"min_confidence must be between 0 and 1, got {min_confidence!r}")
    unlabelled = {r["item_id"] for r in ds_store.dataset_records(ds["id"]) if not r["labels"]}
    chosen = {int(s["item"]): list(s["suggested"]) for s in suggestions
              if float(s["confidence"]) >= floor and int(s["item"]) in unlabelled and s["suggested"]}
    if not chosen:
        return ds["version"], 0
    return relabel_items(user, ds["id"], chosen), len(chosen)


def _uncertainty(labelled: np.ndarray, labels: list[str], unlabelled: np.ndarray) -> tuple[np.ndarray, list]:
    """1 - margin of a logistic regression fitted on the labelled vectors, and its guess, per unlabelled vector;
    all 1 and no guess when fewer than two concepts are labelled."""
    names = sorted(set(labels))
    if len(names) < 2:
        return np.ones(len(unlabelled), np.float32), [None] * len(unlabelled)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=quality.LOGREG_C, max_iter=500).fit(labelled, labels)
    probs = clf.predict_proba(unlabelled)
    top2 = -np.sort(-probs, axis=1)[:, :2]
    guesses = [str(clf.classes_[i]) for i in np.argmax(probs, axis=1)]
    return (1.0 - (top2[:, 0] - top2[:, 1])).astype(np.float32), guesses


def label_first(user: User | str, dataset: str | int, n: int = 50, model: str | int = GENERAL,
                progress: Progress | None = None) -> list[FirstToLabel]:
    """Up to ``n`` unlabelled images of the dataset to label first, best first (see the module docstring). Embeds the
    images that are not cached yet with ``model`` (the general embedder by default)."""
    ds = ds_store.get_dataset(user, dataset)
    key, _row = embedding.resolve_model(user, model)
    try:
        n = int(n)
    except (TypeError, ValueError):
        raise UserError(f"n must be a whole number from 1 to {MAX_FIRST}, got {n!r}") from None
    if not 1 <= n <= MAX_FIRST:
        raise UserError(f"n must be a whole number from 1 to {MAX_FIRST}, got {n}")
    records = ds_store.dataset_records(ds["id"])
    if not any(not r["labels"] for r in records):
        return []

    def embedded(done: int, total: int, ips: float) -> None:
        if progress is not None:
            progress(done / max(total, 1), f"Embedded images {done}/{total}")

    got = quality.embeddings(ds, records, key, embedded)
    assert got is not None  # nothing asks it to stop
    _ids, vectors = got
    lab = [i for i, r in enumerate(records) if len(r["labels"]) == 1]
    unl = [i for i, r in enumerate(records) if not r["labels"]]
    uncertainty, guesses = _uncertainty(vectors[lab], [records[i]["labels"][0] for i in lab], vectors[unl])
    cand = vectors[unl]
    anchors = vectors[[i for i, r in enumerate(records) if r["labels"]]]
    nearest = np.full(len(unl), 2.0, np.float32)  # cosine distance to the nearest labelled (or picked) image
    for start in range(0, len(anchors), 4096):
        nearest = np.minimum(nearest, (1.0 - cand @ anchors[start:start + 4096].T).min(axis=1))
    if not len(anchors):
        nearest[:] = 1.0
    out: list[FirstToLabel] = []
    taken = np.zeros(len(unl), bool)
    for _ in range(min(n, len(unl))):
        score = np.where(taken, -np.inf, uncertainty * np.maximum(nearest, 0.0))
        best = int(np.argmax(score))
        out.append({"item": int(records[unl[best]]["item_id"]), "uncertainty": round(float(uncertainty[best]), 6),
                    "novelty": round(float(nearest[best]), 6), "score": round(float(score[best]), 6),
                    "guess": guesses[best]})
        taken[best] = True
        nearest = np.minimum(nearest, 1.0 - cand @ cand[best])
    return out
