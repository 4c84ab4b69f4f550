"""The evaluation figures on small arrays, each checked against a direct hand computation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from core.evaluation import metrics as m

CONCEPTS = ["cat", "dog", "fox"]
# Six items, softmax rows. Truth: cat, cat, dog, dog, fox, fox.
PROBS = np.array([
    [0.7, 0.2, 0.1],  # cat -> cat
    [0.3, 0.6, 0.1],  # cat -> dog (wrong, 0.6)
    [0.1, 0.8, 0.1],  # dog -> dog
    [0.2, 0.3, 0.5],  # dog -> fox (wrong, 0.5)
    [0.1, 0.1, 0.8],  # fox -> fox
    [0.4, 0.35, 0.25],  # fox -> cat (wrong, 0.4)
])
LABELS = [["cat"], ["cat"], ["dog"], ["dog"], ["fox"], ["fox"]]


def _auc_by_pairs(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the share of (positive, negative) pairs ranked correctly, ties counting half."""
    pos, neg = score[truth == 1], score[truth == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_classifier_figures_match_hand_computation():
    y = m.multi_hot(LABELS, CONCEPTS)
    res = m.classifier_metrics(y, PROBS, CONCEPTS, threshold=0.5)
    assert res["accuracy"] == pytest.approx(3 / 6)
    # top-2 by hand: item 1 (dog .6, cat .3) ok, item 3 (fox .5, dog .3) ok, item 5 (cat .4, dog .35) misses fox.
    assert m.top_k_accuracy(y, PROBS, 2) == pytest.approx(5 / 6)
    assert res["top5"] == 1.0  # three concepts: every label is in the top 5
    aucs = [_auc_by_pairs(y[:, i], PROBS[:, i]) for i in range(3)]
    assert res["macro_roc_auc"] == pytest.approx(np.mean(aucs))
    table = {row["concept"]: row for row in res["per_concept"]}
    # threshold .5: predicted cat {0}, dog {1, 2}, fox {3, 4}
    assert (table["cat"]["tp"], table["cat"]["fp"], table["cat"]["fn"]) == (1, 0, 1)
    assert (table["dog"]["tp"], table["dog"]["fp"], table["dog"]["fn"]) == (1, 1, 1)
    assert table["dog"]["labelled"] == 2 and table["dog"]["predicted"] == 2
    assert table["cat"]["precision"] == 1.0 and table["cat"]["recall"] == 0.5
    assert table["cat"]["f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    counts = np.array(res["confusion"]["counts"])
    assert counts.tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert np.array(res["confusion"]["normalised"])[0].tolist() == [0.5, 0.5, 0.0]
    wrong = res["misclassified"]
    assert [w["index"] for w in wrong] == [1, 3, 5]  # sorted by confidence in the wrong answer: .6, .5, .4
    assert wrong[0]["true"] == [{"name": "cat", "probability": 0.3}]
    assert wrong[0]["predicted"][0]["name"] == "dog"


def test_threshold_changes_per_concept_table():
    y = m.multi_hot(LABELS, CONCEPTS)
    low = {r["concept"]: r for r in m.per_concept_table(y, PROBS, CONCEPTS, 0.3)}
    high = {r["concept"]: r for r in m.per_concept_table(y, PROBS, CONCEPTS, 0.75)}
    # cat at .3: items 0, 1, 5 predicted -> tp 2 (0, 1), fp 1 (5); at .75 nothing predicted
    assert (low["cat"]["predicted"], low["cat"]["tp"], low["cat"]["fp"]) == (3, 2, 1)
    assert (high["cat"]["predicted"], high["cat"]["tp"], high["cat"]["fn"]) == (0, 0, 2)
    assert high["dog"]["predicted"] == 1 and high["fox"]["predicted"] == 1


def test_best_f1_threshold_is_the_best_over_all_cutoffs():
    y = m.multi_hot(LABELS, CONCEPTS)
    best = m.best_f1_thresholds(y, PROBS, CONCEPTS)
    for i, name in enumerate(CONCEPTS):
        f1s = []
        for t in np.unique(PROBS[:, i]):
            pred = PROBS[:, i] >= t
            tp = int((pred & (y[:, i] == 1)).sum())
            p = tp / pred.sum()
            r = tp / y[:, i].sum()
            f1s.append((2 * p * r / (p + r)) if p + r else 0.0)
        assert best[name]["f1"] == pytest.approx(max(f1s))
        assert best[name]["threshold"] in PROBS[:, i]


def test_curves_and_average_precision_by_hand():
    y = m.multi_hot(LABELS, CONCEPTS)
    cv = m.curves(y, PROBS, CONCEPTS)
    # AP of "dog": ranking by score .8(+) .6(-) .35(-) .3(+) .2 .1 -> precision at hits 1/1 and 2/4 -> AP = .75
    assert cv["dog"]["pr"]["ap"] == pytest.approx((1.0 + 0.5) / 2)
    assert cv["cat"]["roc"]["auc"] == pytest.approx(_auc_by_pairs(y[:, 0], PROBS[:, 0]))
    assert cv["fox"]["roc"]["fpr"][0] == 0.0 and cv["fox"]["roc"]["tpr"][-1] == 1.0
    assert "__micro__" in cv


def test_multi_label_misclassified_uses_threshold():
    probs = np.array([[0.9, 0.8, 0.1], [0.9, 0.2, 0.1]])
    y = m.multi_hot([["cat", "dog"], ["cat", "fox"]], CONCEPTS)
    wrong = m.misclassified(y, probs, CONCEPTS, multi_label=True, threshold=0.5)
    assert [w["index"] for w in wrong] == [1]
    assert {p["name"] for p in wrong[0]["true"]} == {"cat", "fox"}


def test_items_without_labels_are_refused():
    with pytest.raises(ValueError, match="at least one label"):
        m.classifier_metrics(np.zeros((1, 3)), PROBS[:1], CONCEPTS)


def test_two_concepts_top_k():
    y = m.multi_hot([["cat"], ["dog"], ["dog"]], ["cat", "dog"])
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    assert m.top_k_accuracy(y, probs, 1) == pytest.approx(2 / 3)


def _brute_force_retrieval(q, ql, g, gl):
    """recall@1, recall@5 and mAP@R by plain loops over cosine similarities."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    r1 = r5 = 0
    aps = []
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: -float(qn[i] @ gn[j]))
        rel = [bool(set(ql[i]) & set(gl[j])) for j in order]
        r1 += rel[0]
        r5 += any(rel[:5])
        big_r = sum(rel)
        hits, score = 0, 0.0
        for rank in range(big_r):
            if rel[rank]:
                hits += 1
                score += hits / (rank + 1)
        aps.append(score / big_r)
    return r1 / len(q), r5 / len(q), float(np.mean(aps))


def test_embedder_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8))
    glabels = [[CONCEPTS[i % 3]] for i in range(30)]
    gallery = np.stack([centers[i % 3] + rng.normal(scale=1.2, size=8) for i in range(30)])
    qlabels = [[CONCEPTS[i % 3]] for i in range(9)]
    queries = np.stack([centers[i % 3] + rng.normal(scale=1.2, size=8) for i in range(9)])
    res = m.embedder_metrics(queries, qlabels, gallery, glabels)
    r1, r5, map_r = _brute_force_retrieval(queries, qlabels, gallery, glabels)
    assert res["recall_at_1"] == pytest.approx(r1)
    assert res["recall_at_5"] == pytest.approx(r5)
    assert res["map_at_r"] == pytest.approx(map_r)
    assert 0 < res["map_at_r"] < 1  # noisy clusters: neither trivial nor perfect


def test_embedder_perfect_separation_and_no_relevant_queries():
    gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    glabels = [["a"], ["a"], ["b"], ["b"]]
    res = m.embedder_metrics(np.array([[1.0, 0.05], [0.3, 0.3]]), [["a"], ["zzz"]], gallery, glabels)
    assert res["recall_at_1"] == 1.0 and res["map_at_r"] == 1.0
    assert res["queries_without_relevant"] == 1


def test_embedding_map_is_2d():
    coords, method = m.embedding_map(np.random.default_rng(0).normal(size=(10, 5)))
    assert coords.shape == (10, 2) and method in {"pca", "umap"}


def test_detector_ap_by_hand():
    truth = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}]
    exact = [{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]}]
    res = m.detector_metrics(exact, truth, ["a", "b"])
    assert res["map"] == pytest.approx(1.0) and res["ap50"] == pytest.approx(1.0)
    assert res["per_concept_ap"]["b"] is None  # no ground truth for b
    # a false positive scored above the hit: precision 1/2 at recall 1 -> AP = .5 at every IoU threshold
    with_fp = [{"boxes": [[50, 50, 60, 60], [0, 0, 10, 10]], "scores": [0.95, 0.9], "labels": [0, 0]}]
    assert m.detector_metrics(with_fp, truth, ["a"])["map"] == pytest.approx(0.5)
    # a box with IoU 0.6 (0..10 against 0..6 wide? use 10x10 vs 10x6: IoU = 60/100) matches at .50, .55, .60 only
    shifted = [{"boxes": [[0, 0, 10, 6]], "scores": [0.9], "labels": [0]}]
    res = m.detector_metrics(shifted, truth, ["a"])
    assert res["ap50"] == pytest.approx(1.0)
    assert res["map"] == pytest.approx(3 / 10)
    # a detection of the wrong concept does not count
    wrong = [{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [1]}]
    assert m.detector_metrics(wrong, truth, ["a", "b"])["map"] == pytest.approx(0.0)


def test_detector_figures_come_from_cocoeval_perfect_and_by_size():
    """Perfect predictions score 1.0 everywhere measurable; a size with no ground truth is None, as COCO's -1."""
    truth = [{"boxes": [[0, 0, 10, 10], [20, 20, 70, 70]], "labels": [0, 1]},
             {"boxes": [[5, 5, 205, 205]], "labels": [1]}]
    perfect = [dict(t, scores=[0.9] * len(t["labels"])) for t in truth]
    res = m.detector_metrics(perfect, truth, ["a", "b"])
    for key in ("map", "ap50", "ap75", "map_small", "map_medium", "map_large"):
        assert res[key] == pytest.approx(1.0), key
    assert res["per_concept_ap"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    only_small = m.detector_metrics(perfect[:1], truth[:1], ["a", "b"])
    assert only_small["map_large"] is None
    # no detections at all: zero, not an error
    none = [{"boxes": [], "scores": [], "labels": []} for _ in truth]
    assert m.detector_metrics(none, truth, ["a", "b"])["map"] == 0.0


def test_detector_ap_on_a_hand_made_case_with_its_known_value():
    """Two images, one box each; detections in score order: hit, false positive, hit. Precision 1 up to recall .5
    and 2/3 up to recall 1 (interpolated), so COCO's 101-point AP is (51 * 1 + 50 * 2/3) / 101 at every IoU."""
    truth = [{"boxes": [[0, 0, 40, 40]], "labels": [0]}, {"boxes": [[10, 10, 50, 50]], "labels": [0]}]
    preds = [{"boxes": [[0, 0, 40, 40], [60, 60, 90, 90]], "scores": [0.9, 0.8], "labels": [0, 0]},
             {"boxes": [[10, 10, 50, 50]], "scores": [0.7], "labels": [0]}]
    res = m.detector_metrics(preds, truth, ["a"])
    known = (51 + 50 * 2 / 3) / 101
    assert res["map"] == pytest.approx(known) and res["ap50"] == pytest.approx(known)
    curve = res["pr_curves"]["a"]
    assert len(curve["recall"]) == len(curve["precision"]) == 101
    assert curve["precision"][50] == pytest.approx(1.0) and curve["precision"][51] == pytest.approx(2 / 3, abs=1e-6)
    assert curve["ap"] == pytest.approx(known)


def test_detection_confusion_names_each_kind_of_error():
    truth = [{"boxes": [[0, 0, 40, 40], [100, 100, 140, 140]], "labels": [0, 1]},
             {"boxes": [[0, 0, 30, 30]], "labels": [1]}]
    preds = [{"boxes": [[0, 0, 40, 40], [0, 0, 40, 40], [100, 100, 140, 140], [200, 200, 220, 220]],
              "scores": [0.9, 0.8, 0.7, 0.6], "labels": [0, 0, 0, 1]},  # hit a; duplicate a; b seen as a; background b
             {"boxes": [], "scores": [], "labels": []}]  # the b box missed
    res = m.detection_confusion(preds, truth, ["a", "b"])
    a, b = res["per_concept"]["a"], res["per_concept"]["b"]
    assert (a["matched"], a["wrong_concept"], a["background"], a["missed"]) == (1, 1, 1, 0)
    assert a["confused_with"] == {"b": 1}
    assert (b["matched"], b["wrong_concept"], b["background"], b["missed"]) == (0, 0, 1, 2)
    assert res["images"] == [{"errors": ["background", "missed", "wrong_concept"], "concepts": ["a", "b"]},
                             {"errors": ["missed"], "concepts": ["b"]}]
