"""What the Jobs page shows, computed without Streamlit: progress text, durations, the live curves as plotly figures.

Kept out of the page so the page reads as a description of the UI and so these pieces are testable on their own.
"""

from __future__ import annotations

import time
from typing import Any

import plotly.graph_objects as go

from core.records import JobProgress, MemoryUse, SeriesPoint

STATE_ICONS = {
    "queued": ":material/schedule:", "starting": ":material/hourglass_top:", "running": ":material/play_circle:",
    "succeeded": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/cancel:",
    "interrupted": ":material/pause_circle:",
}
_ACCURACY_WORDS = ("acc", "top1", "top5", "top_1", "top_5", "recall", "map", "f1", "auc")


def duration(seconds: float | None) -> str:
    """``95`` -> ``1 min 35 s``; None -> ``-``."""
    if seconds is None or seconds != seconds:
        return "-"
    s = int(round(max(0.0, float(seconds))))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def progress_text(state: str, p: JobProgress, position: int | None = None) -> str:
    """One line under the progress bar: epoch, step, images per second and ETA; a queued job's place in line."""
    if state == "queued":
        return "Waiting in the queue for a free slot" + (f": number {position} in line" if position else "")
    parts = []
    if p.get("epoch") is not None:
        parts.append(f"epoch {p['epoch']}/{p.get('num_epochs') or '?'}")
    if p.get("step") is not None:
        parts.append(f"step {p['step']}/{p.get('steps_per_epoch') or '?'}")
    if p.get("images_per_sec"):
        parts.append(f"{p['images_per_sec']:.1f} images/s")
    if state in ("starting", "running") and p.get("eta_s") is not None:
        parts.append(f"ETA {duration(p['eta_s'])}")
    if not parts:
        return "Starting: loading the data and building the network" if state == "starting" else state
    return " · ".join(parts)


def memory_text(p: JobProgress) -> str:
    m: MemoryUse = p.get("memory") or {}
    parts = []
    if m.get("rss_mb") is not None:
        parts.append(f"RAM {m['rss_mb']:.0f} MiB")
    if m.get("gpu_allocated_mb") is not None:
        parts.append(f"GPU {m['gpu_allocated_mb']:.0f} MiB allocated, {m.get('gpu_reserved_mb', 0):.0f} MiB reserved")
    return ", ".join(parts) or "-"


def _layout(fig: go.Figure, title: str, y: str) -> go.Figure:
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title=y, height=300,
                      margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return fig


def figures(history: list[dict[str, Any]], series: list[SeriesPoint]) -> dict[str, go.Figure]:
    """Loss, accuracy and learning-rate curves from per-step points and per-epoch metrics (empty ones left out)."""
    figs: dict[str, go.Figure] = {}
    steps = [pt for pt in series if pt and pt[0] is not None]
    loss = go.Figure()
    if steps:
        loss.add_trace(go.Scatter(x=[p[0] for p in steps], y=[p[1] for p in steps], mode="lines",
                                  name="loss per step", line={"width": 1}))
    for key in sorted({k for h in history for k in h if "loss" in k}):
        pts = [(h["epoch"], h[key]) for h in history if isinstance(h.get(key), (int, float))]
        if pts:
            loss.add_trace(go.Scatter(x=[e for e, _ in pts], y=[v for _, v in pts], mode="lines+markers", name=key))
    if loss.data:
        figs["loss"] = _layout(loss, "Loss", "loss")
    acc = go.Figure()
    for key in sorted({k for h in history for k in h if any(w in k.lower() for w in _ACCURACY_WORDS)}):
        pts = [(h["epoch"], h[key]) for h in history if isinstance(h.get(key), (int, float))]
        if pts:
            acc.add_trace(go.Scatter(x=[e for e, _ in pts], y=[v for _, v in pts], mode="lines+markers", name=key))
    if acc.data:
        figs["accuracy"] = _layout(acc, "Accuracy and retrieval", "value")
    lr = [p for p in steps if len(p) > 2 and p[2] is not None]
    if lr:
        figs["lr"] = _layout(go.Figure(go.Scatter(x=[p[0] for p in lr], y=[p[2] for p in lr], mode="lines",
                                                  name="lrate")), "Learning rate", "lrate")
        figs["lr"].update_yaxes(rangemode="tozero")
    return figs
