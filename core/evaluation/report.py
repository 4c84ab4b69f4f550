"""A model's evaluation as one self-contained HTML file: opens in a browser without the server or the network.

plotly.js is inlined once; images (misclassified samples, embedding-map thumbnails, detector samples) are inlined as
base64 JPEG thumbnails.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Sequence
from typing import Any

from core.errors import UserError
from core.evaluation import charts, service
from core.records import Evaluation, ModelRow
from core.users import User

MISCLASSIFIED_SAMPLE = 24  # images inlined in the report's misclassified gallery
DETECTOR_SAMPLE = 12  # images with errors inlined in a detector's report, each as ground truth beside predictions
MAP_THUMBS = 300  # embedding-map points that carry a hover thumbnail (each ~3 KB)
THUMB_PX = 128

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.6em;margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:0.9em} td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left} .muted{color:#777}
.cards{display:flex;gap:12px;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:6px;padding:10px 16px}
.card b{display:block;font-size:1.4em} .gallery{display:flex;flex-wrap:wrap;gap:10px}
.gallery figure{margin:0;width:150px;font-size:0.8em} .gallery img{max-width:150px;max-height:150px}
#hoverthumb{position:fixed;right:20px;top:20px;border:1px solid #aaa;background:#fff;padding:4px;display:none}
"""


def thumbnail_b64(path: str, size: int = THUMB_PX) -> str:
    """A small JPEG of the image as a data URI ("" when the file cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as src:
            im = src.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except OSError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p class=muted>none</p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cards(figures: dict) -> str:
    return "<div class=cards>" + "".join(
        f"<div class=card><span class=muted>{html.escape(k)}</span><b>{_fmt(v)}</b></div>" for k, v in figures.items()
    ) + "</div>"


def _fig(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def build_report(user: User | str, model: str | int, threshold: float = 0.5) -> str:
    """The HTML text of the model's evaluation report."""
    from plotly.offline import get_plotlyjs

    row = service.get(user, model)
    result = service.evaluate(user, row["id"])
    parts = [
        f"<h1>{html.escape(row['name'])}</h1>",
        f"<p class=muted>{html.escape(row['kind'])} · template {html.escape(row['template'])} · dataset "
        f"{html.escape(result['dataset']['name'])} v{result['dataset']['version']} · evaluated on the "
        f"{html.escape(result['split'])} split · report made {time.strftime('%Y-%m-%d %H:%M')}</p>",
        "<h2>Summary</h2>", _cards(service.summary(result)),
        "<h2>Hyperparameters</h2>", _table([{"parameter": k, "value": v} for k, v in sorted(row["params"].items())]),
    ]
    if result["kind"] == "classifier":
        parts += _classifier_sections(row, result, threshold)
    elif result["kind"] == "embedder":
        parts += _embedder_sections(result)
    else:
        parts += _detector_sections(result)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(row['name'])}: evaluation</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        + "\n".join(parts) + "<div id=hoverthumb><img id=hoverimg></div></body></html>"
    )


def _classifier_sections(row: ModelRow, result: Evaluation, threshold: float) -> list[str]:
    figures = service.per_concept_at(row, threshold) if threshold != result["threshold"] else result["per_concept"]
    table: list[dict[str, Any]] = [dict(r) for r in figures]
    best = result["best_f1"]
    for r in table:
        b = best.get(r["concept"]) or {}
        r["best_f1_threshold"], r["best_f1"] = b.get("threshold"), b.get("f1")
    gallery = []
    for miss in result["misclassified"][:MISCLASSIFIED_SAMPLE]:
        true = ", ".join(f"{t['name']} {t['probability']:.2f}" for t in miss["true"])
        pred = ", ".join(f"{p['name']} {p['probability']:.2f}" for p in miss["predicted"])
        gallery.append(f"<figure><img src='{thumbnail_b64(miss['path'])}' alt='item {miss['item_id']}'>"
                       f"<figcaption>true: {html.escape(true)}<br>predicted: {html.escape(pred)}</figcaption></figure>")
    return [
        f"<h2>Per concept at threshold {threshold:.2f}</h2>",
        _table(table, ["concept", "labelled", "predicted", "tp", "fp", "fn", "precision", "recall", "f1",
                       "best_f1_threshold", "best_f1"]),
        _fig(charts.per_concept_f1(table, best), "f1"),
        "<h2>Confusion matrix</h2>", _fig(charts.confusion_heatmap(result), "cm_counts"),
        _fig(charts.confusion_heatmap(result, normalised=True), "cm_norm"),
        "<h2>Curves</h2>", _fig(charts.pr_curves(result), "pr"), _fig(charts.roc_curves(result), "roc"),
        f"<h2>Misclassified ({len(result['misclassified'])}; {len(gallery)} shown)</h2>",
        "<div class=gallery>" + "".join(gallery) + "</div>" if gallery else "<p class=muted>none</p>",
    ]


def _baseline_table(result: Evaluation) -> list[str]:
    """This model's recall@1, recall@5 and mAP@R beside the untrained general embedder's on the same split."""
    base = result.get("baseline")
    if not base:
        return []
    names = (("recall@1", "recall_at_1"), ("recall@5", "recall_at_5"), ("mAP@R", "map_at_r"))
    rows = [{"model": "this model", **{label: result.get(k) for label, k in names}},
            {"model": base["label"], **{label: base.get(k) for label, k in names}}]
    return ["<p>What training bought: the untrained general embedder on the same queries and gallery.</p>",
            _table(rows, ["model", *(label for label, _ in names)])]


def _embedder_sections(result: Evaluation) -> list[str]:
    base = result.get("baseline")
    points = charts.map_points(result)
    thumbs = [thumbnail_b64(p["path"], 96) if i < MAP_THUMBS else "" for i, p in enumerate(points)]
    hover_js = (
        "<script>(function(){var d=document.getElementById('embmap');var box=document.getElementById('hoverthumb');"
        "var img=document.getElementById('hoverimg');"
        "d.on('plotly_hover',function(e){var c=e.points[0].customdata;if(c&&c[1]){img.src=c[1];"
        "box.style.display='block';}});d.on('plotly_unhover',function(){box.style.display='none';});})();</script>"
    )
    return [
        "<h2>Retrieval</h2>",
        f"<p>{result['queries']} queries from the {html.escape(result['split'])} split against a gallery of "
        f"{result['gallery']} other images; relevant = shares a concept.</p>",
        *_baseline_table(result),
        _fig(charts.recall_at_k([("model", result["recall_at_k"])]
                                + ([(base["label"], base["recall_at_k"])] if base else [])), "rk"),
        "<h2>Embedding map</h2><p class=muted>hover a point to see its image</p>",
        _fig(charts.embedding_map(result, thumbs), "embmap"), hover_js,
    ]


def detector_table(result: Evaluation) -> list[dict[str, Any]]:
    """One row per concept: AP@[.5:.95], AP50 and where its boxes went (matched, wrong concept, background,
    missed)."""
    confusion = result.get("detection_confusion") or {}
    rows: list[dict[str, Any]] = []
    for name in result["concepts"]:
        c = confusion.get(name) or {}
        confused = ", ".join(f"{k} {v}" for k, v in sorted(c.get("confused_with", {}).items(), key=lambda kv: -kv[1]))
        rows.append({"concept": name, "AP@[.5:.95]": result["per_concept_ap"].get(name),
                     "AP50": result["per_concept_ap50"].get(name), "matched": c.get("matched"),
                     "wrong concept": c.get("wrong_concept"), "taken for": confused, "background": c.get("background"),
                     "missed": c.get("missed")})
    return rows


def _pil_b64(im) -> str:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _detector_sections(result: Evaluation) -> list[str]:
    from core.evaluation.drawing import draw_boxes

    sizes = {k: result.get(k) for k in ("map", "ap50", "ap75", "map_small", "map_medium", "map_large")}
    wrong = [s for s in result["samples"] if s.get("errors")][:DETECTOR_SAMPLE]
    gallery = []
    for s in wrong:
        try:
            truth = _pil_b64(draw_boxes(s["path"], s["truth"], result["concepts"], max_side=THUMB_PX * 2))
            found = _pil_b64(draw_boxes(s["path"], s["predicted"], result["concepts"], max_side=THUMB_PX * 2))
        except (OSError, UserError):  # its stored image gone since the evaluation (open_image says so): left out
            continue
        gallery.append(f"<figure><img src='{truth}' alt='truth'><img src='{found}' alt='predicted'>"
                       f"<figcaption>item {s['item_id']}: ground truth, predicted; "
                       f"{html.escape(', '.join(k.replace('_', ' ') for k in s['errors']))}</figcaption></figure>")
    parts = ["<h2>Per concept</h2>", _table(detector_table(result)), _fig(charts.detection_ap(result), "ap"),
             "<p class=muted>" + html.escape(json.dumps(sizes)) + "</p>"]
    if result.get("pr_curves"):
        parts += ["<h2>Precision-recall</h2>", _fig(charts.detection_pr_curves(result), "detpr")]
    if result.get("detection_confusion"):
        parts += ["<h2>Where the boxes went</h2>", _fig(charts.detection_confusion(result), "detconf")]
    parts += [f"<h2>Images with errors ({sum(1 for s in result['samples'] if s.get('errors'))}; "
              f"{len(gallery)} shown)</h2>",
              "<div class=gallery>" + "".join(gallery) + "</div>" if gallery else "<p class=muted>none</p>"]
    return parts
