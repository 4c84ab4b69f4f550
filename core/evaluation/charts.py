"""Plotly figures of an evaluation, shared by the Models page and the HTML report (no Streamlit here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from core.records import Evaluation

MAX_CURVES = 12  # concepts drawn at once on the PR/ROC charts; the page lets the user pick which


def confusion_heatmap(result: Evaluation, normalised: bool = False) -> go.Figure:
    """True concept (rows) against top prediction (columns); counts or row-normalised shares."""
    concepts = result["concepts"]
    z = result["confusion"]["normalised" if normalised else "counts"]
    text = [[f"{v:.2f}" if normalised else str(v) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=concepts, y=concepts, text=text, texttemplate="%{text}" if len(concepts) <= 30 else None,
        colorscale="Blues", hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>",
    ))
    fig.update_layout(title="Confusion matrix" + (" (row-normalised)" if normalised else " (counts)"),
                      xaxis_title="predicted (top-1)", yaxis_title="true", yaxis_autorange="reversed",
                      height=max(360, 22 * len(concepts) + 160), margin=dict(l=10, r=10, t=50, b=10))
    return fig


def _pick(result: Evaluation, concepts: Sequence[str] | None) -> list[str]:
    names = [c for c in (concepts or result["concepts"]) if c in result["curves"]]
    return names[:MAX_CURVES]


def _curve_traces(result: Evaluation, concepts: Sequence[str] | None, micro: bool, curve: str, x: str, y: str,
                  score: str) -> go.Figure:
    """One line per concept (and the dashed micro average) from ``result["curves"][name][curve]``, score in legend."""
    fig = go.Figure()
    names = _pick(result, concepts) + (["__micro__"] if micro and "__micro__" in result["curves"] else [])
    for name in names:
        c = result["curves"][name][curve]
        label = "micro average" if name == "__micro__" else name
        fig.add_trace(go.Scatter(x=c[x], y=c[y], mode="lines", name=f"{label} ({score.upper()} {c[score]:.3f})",
                                 line=dict(dash="dash") if name == "__micro__" else None))
    return fig


def pr_curves(result: Evaluation, concepts: Sequence[str] | None = None, micro: bool = True) -> go.Figure:
    """Precision-recall curve per concept (and the micro average), AP in the legend."""
    fig = _curve_traces(result, concepts, micro, "pr", "recall", "precision", "ap")
    fig.update_layout(title="Precision-recall", xaxis_title="recall", yaxis_title="precision",
                      xaxis_range=[0, 1.01], yaxis_range=[0, 1.05], margin=dict(l=10, r=10, t=50, b=10))
    return fig


def roc_curves(result: Evaluation, concepts: Sequence[str] | None = None, micro: bool = True) -> go.Figure:
    """ROC curve per concept (and the micro average), AUC in the legend."""
    fig = _curve_traces(result, concepts, micro, "roc", "fpr", "tpr", "auc")
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="grey", dash="dot"),
                             name="chance", hoverinfo="skip"))
    fig.update_layout(title="ROC", xaxis_title="false positive rate", yaxis_title="true positive rate",
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def per_concept_f1(rows: Sequence[dict], best: dict) -> go.Figure:
    """F1 per concept at the chosen threshold, next to the best F1 any threshold reaches."""
    names = [r["concept"] for r in rows]
    fig = go.Figure([
        go.Bar(x=names, y=[r["f1"] for r in rows], name="F1 at threshold"),
        go.Bar(x=names, y=[(best.get(n) or {}).get("f1") for n in names], name="best F1",
               hovertext=[f"threshold {(best.get(n) or {}).get('threshold', float('nan')):.3f}" for n in names]),
    ])
    fig.update_layout(barmode="group", title="F1 per concept", yaxis_range=[0, 1.05],
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def embedding_map(result: Evaluation, thumbs: Sequence[str] | None = None) -> go.Figure:
    """The 2-D embedding map coloured by concept; ``customdata`` carries item ids (and thumbnails when given)."""
    points = map_points(result)
    fig = go.Figure()
    by_concept: dict[str, list[int]] = {}
    for i, p in enumerate(points):
        by_concept.setdefault(p["concept"], []).append(i)
    for concept, idx in sorted(by_concept.items()):
        custom = [[points[i]["item_id"], thumbs[i] if thumbs else ""] for i in idx]
        fig.add_trace(go.Scatter(
            x=[points[i]["x"] for i in idx], y=[points[i]["y"] for i in idx], mode="markers", name=concept,
            customdata=custom, marker=dict(size=8, opacity=0.8),
            hovertemplate=f"{concept}<br>item %{{customdata[0]}}<extra></extra>",
        ))
    method = result.get("map_method", "pca").upper()
    fig.update_layout(title=f"Embedding map ({method})", xaxis_title=f"{method} 1", yaxis_title=f"{method} 2",
                      height=520, margin=dict(l=10, r=10, t=50, b=10), dragmode="lasso")
    return fig


def map_points(result: Evaluation) -> list[dict[str, Any]]:
    """An embedder evaluation's 2-D map: one point (x, y, item_id, path, concept, labels, split) per shown item.

    ``result["map"]`` means that only for embedders; a detector's "map" is its mAP (a number).
    """
    points = result["map"]
    if not isinstance(points, list):
        raise ValueError(f"a {result['kind']} evaluation has no embedding map")
    return points


def recall_at_k(series: Sequence[tuple[str, dict]]) -> go.Figure:
    """recall@k against k for one or more embedders: [(label, {"1": r1, "2": r2, ...}), ...]."""
    fig = go.Figure()
    for label, curve in series:
        ks = sorted(curve, key=int)
        fig.add_trace(go.Scatter(x=[int(k) for k in ks], y=[curve[k] for k in ks], mode="lines+markers", name=label))
    fig.update_layout(title="recall@k", xaxis_title="k", yaxis_title="recall", yaxis_range=[0, 1.05],
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def compare_curves(comparison: dict) -> list[go.Figure]:
    """Overlaid curves of compared models: micro PR and ROC for classifiers, recall@k for embedders, AP50 per
    concept (bars side by side) for detectors."""
    curves = comparison["curves"]
    if comparison["kind"] == "embedder":
        return [recall_at_k([(c["model"], c["recall_at_k"]) for c in curves])]
    if comparison["kind"] == "detector":
        bars = go.Figure([go.Bar(x=list(c["per_concept_ap50"]), y=list(c["per_concept_ap50"].values()),
                                 name=c["model"]) for c in curves])
        bars.update_layout(barmode="group", title="AP50 per concept", yaxis_range=[0, 1.05])
        return [bars]
    if comparison["kind"] != "classifier":
        return []
    pr, roc = go.Figure(), go.Figure()
    for c in curves:
        pr.add_trace(go.Scatter(x=c["pr"]["recall"], y=c["pr"]["precision"], mode="lines",
                                name=f"{c['model']} (AP {c['pr']['ap']:.3f})"))
        roc.add_trace(go.Scatter(x=c["roc"]["fpr"], y=c["roc"]["tpr"], mode="lines",
                                 name=f"{c['model']} (AUC {c['roc']['auc']:.3f})"))
    pr.update_layout(title="Precision-recall (micro average)", xaxis_title="recall", yaxis_title="precision")
    roc.update_layout(title="ROC (micro average)", xaxis_title="false positive rate", yaxis_title="true positive rate")
    return [pr, roc]


def prediction_bar(concepts: Sequence[dict], title: str = "") -> go.Figure:
    """Horizontal bars of predicted concepts and probabilities, best on top."""
    names = [c["name"] for c in concepts][::-1]
    fig = go.Figure(go.Bar(x=[c["probability"] for c in concepts][::-1], y=names, orientation="h",
                           text=[f"{c['probability']:.3f}" for c in concepts][::-1], textposition="auto"))
    fig.update_layout(title=title, xaxis_range=[0, 1], xaxis_title="probability",
                      height=120 + 28 * len(names), margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig


def detection_ap(result: Evaluation) -> go.Figure:
    """Average precision per concept (AP@[.5:.95] and AP50)."""
    names = [n for n, v in result["per_concept_ap"].items() if v is not None]
    fig = go.Figure([
        go.Bar(x=names, y=[result["per_concept_ap"][n] for n in names], name="AP@[.5:.95]"),
        go.Bar(x=names, y=[result["per_concept_ap50"][n] for n in names], name="AP50"),
    ])
    fig.update_layout(barmode="group", title="Average precision per concept", yaxis_range=[0, 1.05])
    return fig


def detection_pr_curves(result: Evaluation, concepts: Sequence[str] | None = None) -> go.Figure:
    """A detector's precision-recall curve per concept at IoU 0.5 (COCO's 101 recall points), AP50 in the legend,
    each concept in its colour on the photos."""
    from core.evaluation.drawing import concept_colours

    colours = concept_colours(result["concepts"])
    fig = go.Figure()
    for name in [c for c in (concepts or result["concepts"]) if c in result["pr_curves"]][:MAX_CURVES]:
        curve = result["pr_curves"][name]
        fig.add_trace(go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines",
                                 name=f"{name} (AP50 {curve['ap']:.3f})", line=dict(color=colours[name])))
    fig.update_layout(title="Precision-recall at IoU 0.5", xaxis_title="recall", yaxis_title="precision",
                      xaxis_range=[0, 1], yaxis_range=[0, 1.05], margin=dict(l=10, r=10, t=50, b=10))
    return fig


DETECTION_OUTCOMES = (("matched", "matched its concept", "#2CA02C"),
                      ("wrong_concept", "on another concept's object", "#FF7F0E"),
                      ("background", "on background", "#D62728"),
                      ("missed", "object missed", "#7F7F7F"))


def detection_confusion(result: Evaluation) -> go.Figure:
    """Per concept, where its detections went (matched, on another concept's object, on background) and how many
    of its objects were missed, at IoU 0.5 and the model's detection_score_threshold."""
    confusion = result["detection_confusion"]
    names = [c for c in result["concepts"] if c in confusion]
    fig = go.Figure([go.Bar(x=names, y=[confusion[n][key] for n in names], name=label, marker_color=colour)
                     for key, label, colour in DETECTION_OUTCOMES])
    fig.update_layout(barmode="stack", title="Detections and objects per concept (IoU 0.5)", yaxis_title="boxes",
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig
