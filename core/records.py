"""The records that cross layers (store -> services -> pages, CLI and API), as TypedDicts: a misspelt key fails mypy.

They are plain dicts at run time (JSON-ready, what the store and the services always returned); the types only say
which keys there are. Rows mirror their table in ``core.store.schema`` column for column; ``total=False`` marks
records whose writers fill in only what they know (a job's progress). Values the studio stores as JSON without one
fixed shape (a template's ``params``, a job's ``config``, final ``metrics``) stay ``dict[str, Any]``.
"""

from __future__ import annotations

from typing import Any, TypedDict

# ------------------------------------------------------------------------------------------------ jobs


class StepProgress(TypedDict, total=False):
    """One step of a run, from the loop (or an index build) to ``Callbacks.on_step``.

    ``phase``: "train" for optimiser steps, "features" while a frozen backbone's features are computed (epoch 0, loss
    NaN), "embedding" while an index embeds images (``done`` of ``total``).
    """

    epoch: int
    step: int
    steps_per_epoch: int
    images_per_sec: float
    loss: float | None
    lr: float | None
    eta_s: float
    phase: str
    done: int
    total: int


class MemoryUse(TypedDict, total=False):
    """A worker's memory, in MiB: resident, and the GPU's allocated and reserved while CUDA is in use."""

    rss_mb: float
    gpu_allocated_mb: float
    gpu_reserved_mb: float


class JobProgress(TypedDict, total=False):
    """A job's progress (the ``jobs.progress`` column): the latest step's fields, what the worker adds, and, when read
    through ``core.jobs.progress`` / ``status``, the job's state and the age of its heartbeat."""

    # the latest step (StepProgress's scalars; steps_per_epoch is None until the run knows it)
    epoch: int
    step: int
    steps_per_epoch: int | None
    images_per_sec: float
    loss: float | None
    lr: float | None
    eta_s: float
    phase: str
    done: int
    total: int
    # the worker's
    fraction: float | None
    num_epochs: int | None
    start_epoch: int | None
    items: int | None
    device: str | None
    numerics: str | None
    memory: MemoryUse
    updated_at: float
    # added when read
    state: str
    heartbeat_age_s: float | None


SeriesPoint = list[float | None]  # [epochs done (float), loss, lr]: one point of a job's live curves


class JobRow(TypedDict):
    """A row of the ``jobs`` table (``core.store.jobs``)."""

    id: int
    owner: str
    visibility: str
    type: str
    state: str
    config: dict[str, Any]
    model_id: int | None
    index_id: int | None
    pid: int | None
    cancel_requested: bool
    progress: JobProgress | None
    error: str | None
    traceback: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    parent_id: int | None
    resume: bool
    attempts: int
    claim: str | None
    host: str | None
    slot: int | None
    result: dict[str, Any] | None
    history: list[dict[str, Any]] | None
    series: list[SeriesPoint] | None


class JobSummary(TypedDict):
    """A job at a glance (``core.jobs.queue_summary``'s ``active``): what it does, its state and how far it got."""

    id: int
    owner: str
    visibility: str
    type: str
    state: str
    what: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    epoch: int | None
    num_epochs: int | None
    fraction: float | None
    eta_s: float | None
    error: str | None
    model_id: int | None
    index_id: int | None
    parent_id: int | None
    attempts: int


class JobListing(JobSummary):
    """A job in ``core.jobs.list_jobs``: its summary and its place in the queue (None unless queued)."""

    position: int | None


class JobStatus(JobListing):
    """Everything about one job but its step curve (``core.jobs.status``)."""

    config: dict[str, Any]
    progress: JobProgress
    metrics: list[dict[str, Any]]
    traceback: str | None
    result: dict[str, Any] | None
    cancel_requested: bool
    pid: int | None
    host: str | None
    log_path: str


class JobCurves(TypedDict):
    """A job's curves so far (``core.jobs.metrics``): one dict of metrics per epoch, and the per-step points."""

    history: list[dict[str, Any]]
    series: list[SeriesPoint]


class QueueSummary(TypedDict):
    """The queue at a glance (``core.jobs.queue_summary``)."""

    counts: dict[str, int]
    running: int
    queued: int
    active: list[JobSummary]
    max_jobs: int


# ------------------------------------------------------------------------------------------------ datasets


class DatasetRow(TypedDict):
    """A row of the ``datasets`` table."""

    id: int
    owner: str
    visibility: str
    name: str
    version: int
    source: str | None
    created_at: float
    updated_at: float


class DatasetSummary(DatasetRow):
    """A dataset with its counts (``core.store.datasets.get_dataset`` and friends): items, items per split, and
    labelled images per concept (concepts in name order)."""

    items: int
    splits: dict[str, int]
    concepts: dict[str, int]


# ------------------------------------------------------------------------------------------------ models


class TrainTimes(TypedDict):
    """How long a model took to train (core.evaluation.service.train_time): its job's wall time (None when trained
    in the foreground), the time inside its epochs, and the rest before and around them."""

    wall_seconds: float | None
    epochs_seconds: float | None
    before_seconds: float | None


class TrainTime(TrainTimes):
    text: str  # a sentence for the model's details


class TuningCandidate(TypedDict, total=False):
    """One setting the head tried (``core.training.tuning``): a learning rate (``lrate``) or a fitted head's penalty
    (``C``), and its loss and top-1 on the held-out images (a fitted head's: over its cross-validation folds)."""

    lrate: float
    C: float
    val_loss: float
    val_top1: float


class HeadTuning(TypedDict, total=False):
    """``core.training.tuning.tune_head``'s record, saved in the model's config as ``head_tuning``; ``text`` is added
    by ``core.evaluation.service.head_tuning`` for people."""

    method: str  # "logistic_regression" for a fitted head; absent for a tuned rate
    param: str  # "C" or "lrate"
    chosen: float
    grid: list[float]
    candidates: list[TuningCandidate]
    criterion: str  # how a fitted head's C was chosen: "val_loss" (absent: before 2026-12-02, the best top-1)
    folds: int  # a fitted head's cross-validation folds (0: too few images, fitted at scikit-learn's default C)
    fit_items: int
    val_items: int
    train_loss: float
    seconds: float
    text: str


class ModelRow(TypedDict):
    """A row of the ``models`` table (``core.store.models``)."""

    id: int
    owner: str
    visibility: str
    name: str
    kind: str
    template: str
    dataset_id: int | None
    dataset_version: int | None
    params: dict[str, Any]
    concepts: list[str]
    preprocess: dict[str, Any]
    metrics: dict[str, Any] | None
    path: str
    train_seconds: float | None
    run: str | None
    base_model_id: int | None
    created_at: float


# ------------------------------------------------------------------------------------------------ indexes


class IndexRow(TypedDict):
    """A row of the ``indexes`` table (``core.store.indexes``); ``params`` is never None (``{}`` when unset)."""

    id: int
    owner: str
    visibility: str
    name: str
    dataset_id: int
    dataset_version: int | None
    model: str
    dim: int
    count: int
    index_type: str
    params: dict[str, Any]
    path: str
    build_seconds: float | None
    created_at: float


class IndexFacts(TypedDict):
    """What the Search page and ``index list`` show of an index (``core.search.service.index_facts``)."""

    id: int
    name: str
    owner: str
    visibility: str
    dataset: str | None  # the dataset's name as the user calls it; None once the dataset is gone
    dataset_id: int
    model: str
    model_label: str
    dim: int
    count: int
    index_type: str
    exact: bool
    index_params: dict[str, Any]
    build_seconds: float | None
    images_per_sec: float | None
    memory_bytes: int | None
    disk_bytes: int
    dataset_version: int | None
    current_dataset_version: int | None
    stale: bool
    created_at: float


class IndexSync(TypedDict):
    """What ``core.search.service.sync_index`` did: items added and removed, the count after, whether it rebuilt."""

    index: str
    added: int
    removed: int
    count: int
    rebuilt: bool


# ------------------------------------------------------------------------------------------------ evaluations


class ConceptFigures(TypedDict):
    """One concept of a classifier at a threshold: labelled and predicted counts, TP, FP, FN, precision, recall, F1."""

    concept: str
    labelled: int
    predicted: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float


class ConceptProbability(TypedDict):
    name: str
    probability: float


class EvaluatedItem(TypedDict):
    """An item of an evaluation set, as the result lists it."""

    item_id: int
    path: str
    labels: list[str]


class Misclassification(TypedDict, total=False):
    """An item a classifier gets wrong: its row in the evaluation set, the true and predicted concepts, the model's
    confidence in its wrong answer, and (once the service adds them) the item's id, path and labels."""

    index: int
    true: list[ConceptProbability]
    predicted: list[ConceptProbability]
    confidence: float
    item_id: int
    path: str
    labels: list[str]


class ClassifierFigures(TypedDict):
    """``core.evaluation.metrics.classifier_metrics``: every classifier figure for one evaluation set."""

    items: int
    accuracy: float
    top5: float
    macro_roc_auc: float | None
    roc_auc_concepts: list[str]
    threshold: float
    per_concept: list[ConceptFigures]
    best_f1: dict[str, dict[str, Any] | None]
    confusion: dict[str, Any]
    curves: dict[str, dict[str, Any]]
    misclassified: list[Misclassification]


class EmbedderFigures(TypedDict):
    """``core.evaluation.metrics.embedder_metrics``: retrieval figures, queries against a separate gallery."""

    queries: int
    gallery: int
    queries_without_relevant: int
    recall_at_1: float | None
    recall_at_5: float | None
    recall_at_k: dict[str, float | None]
    map_at_r: float | None


class EmbedderBaseline(TypedDict):
    """The general embedder's retrieval figures on an embedder's evaluation split (``Evaluation["baseline"]``)."""

    model: str  # core.models.GENERAL
    label: str
    recall_at_1: float | None
    recall_at_5: float | None
    recall_at_k: dict[str, float | None]
    map_at_r: float | None


class DetectorFigures(TypedDict):
    """``core.evaluation.metrics.detector_metrics``: pycocotools' mAP@[.5:.95], AP50, AP75, mAP by box size, AP per
    concept and each concept's precision-recall curve at IoU 0.5 ({"recall", "precision", "ap"})."""

    images: int
    map: float | None
    ap50: float | None
    ap75: float | None
    map_small: float | None
    map_medium: float | None
    map_large: float | None
    per_concept_ap: dict[str, float | None]
    per_concept_ap50: dict[str, float | None]
    pr_curves: dict[str, dict[str, Any]]


class Evaluation(TypedDict, total=False):
    """A model's evaluation (``core.evaluation.service.evaluate``, cached as JSON beside the weights): the figures of
    its kind (ClassifierFigures, EmbedderFigures or DetectorFigures' keys), what was evaluated, and kind-specific
    lists for the page. Only the keys of the model's kind are present."""

    kind: str
    split: str
    model: dict[str, Any]  # id, name, kind, template, dataset_id, dataset_version
    dataset: dict[str, Any]  # id, name, version
    cache_key: dict[str, Any]
    concepts: list[str]
    # classifiers
    items: int
    accuracy: float
    top5: float
    macro_roc_auc: float | None
    roc_auc_concepts: list[str]
    threshold: float
    per_concept: list[ConceptFigures]
    best_f1: dict[str, dict[str, Any] | None]
    confusion: dict[str, Any]
    curves: dict[str, dict[str, Any]]
    misclassified: list[Misclassification]
    skipped_unlabelled: int
    multi_label: bool
    rows: list[EvaluatedItem]
    # embedders
    queries: int
    gallery: int
    queries_without_relevant: int
    recall_at_1: float | None
    recall_at_5: float | None
    recall_at_k: dict[str, float | None]
    map_at_r: float | None
    map_method: str
    baseline: EmbedderBaseline  # the general embedder on the same queries and gallery
    # one key, two meanings: a detector's mAP@[.5:.95], an embedder's 2-D map (points with x, y, item_id, path,
    # concept, labels, split)
    map: float | list[dict[str, Any]] | None
    # detectors
    images: int
    ap50: float | None
    ap75: float | None
    map_small: float | None
    map_medium: float | None
    map_large: float | None
    per_concept_ap: dict[str, float | None]
    per_concept_ap50: dict[str, float | None]
    pr_curves: dict[str, dict[str, Any]]
    detection_confusion: dict[str, dict[str, Any]]  # per concept: matched, wrong_concept, background, missed
    samples: list[dict[str, Any]]  # every evaluated image: item_id, path, truth and predicted boxes, errors, concepts


# ------------------------------------------------------------------------------------------------ data quality

class IssueRow(TypedDict):
    """One row of a dataset's quality list (``core.data.quality``), ranked by ``score`` (0-1, higher: surer).

    kind: "label" (the given label looks wrong), "outlier" (far from every other image) or "near_duplicate"
    (nearly the same image as another one). given/suggested: a concept name, or sorted lists of names on a multi-label
    dataset; None where they do not apply (an outlier or near-duplicate suggests no label).
    """

    item: int
    kind: str
    given: str | list[str] | None
    suggested: str | list[str] | None
    score: float


class IssueReport(TypedDict):
    """The last quality run of a dataset with one embedder, as it stands now (``core.data.quality.dataset_issues``):
    fixed, removed and checked items are left out of ``issues``."""

    dataset: str
    model: str
    version: int  # the dataset version the run looked at
    current_version: int
    multi_label: bool
    created_at: float
    seconds: float
    counts: dict[str, int]  # issues per kind in the run
    issues: list[IssueRow]


class Neighbour(TypedDict):
    """A nearby image of a dataset item in embedding space (cosine similarity)."""

    item: int
    score: float
    labels: list[str]
    path: str
