"""Predict with a stored model on images given as files or uploaded bytes.

Output, one entry per image: ``{"image", "concepts": [{"name", "probability"}], "boxes": [...]}``. Softmax models
list their top concepts; logreg (multi-label) models every concept at or above the threshold; detectors their boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.evaluation import service
from core.users import User

MAX_TOP_K = 1000  # concepts one prediction may list
ImageSource = str | Path | tuple[str, bytes]  # a path, or (file name, bytes) from an upload


def open_image(source: ImageSource):
    """An RGB PIL image from a path or ``(name, bytes)``, held to the importer's rules (allowed formats, the pixel
    limit ``import_max_pixels`` checked before decoding: ``core.data.decode.open_checked``); UserError naming the
    file otherwise."""
    from core.data.decode import open_checked

    name, data = (source if isinstance(source, tuple) else (str(source), None))
    if data is None:
        try:
            data = Path(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise UserError(f"{name}: no such file") from None
        except OSError as exc:
            raise UserError(f"{name}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    return open_checked(bytes(data), str(name))


def _name(source: ImageSource) -> str:
    return source[0] if isinstance(source, tuple) else str(source)


def predict(user: User | str, model: str | int, images: Sequence[ImageSource], *,
            top_k: int = 5, threshold: float = 0.5, score_threshold: float | None = None) -> list[dict]:
    """Run the model on ``images``; see the module docstring for the output. A detector returns the boxes scoring
    above ``score_threshold`` (0 to 1; default the template's detection_score_threshold)."""
    row = service.get(user, model)
    if not images:
        raise UserError("predict: give at least one image")
    top_k, threshold = check_top_k(top_k), check_threshold(threshold)
    if score_threshold is not None:
        score_threshold = check_threshold(score_threshold, "score_threshold")
    pil = [open_image(src) for src in images]  # refuse bad uploads before loading the network
    loaded = service.load_model(row)
    if row["kind"] == "detector":
        found = [p["boxes"] for p in loaded.predict(pil, score_threshold)]
        return [{"image": _name(src), "concepts": _box_concepts(b), "boxes": b} for src, b in zip(images, found)]
    try:
        probs = loaded.predict_together(pil)  # with other requests' images arriving meanwhile (a server)
    except (NotImplementedError, AttributeError, UserError) as exc:
        raise UserError(f"model {row['name']!r} ({row['kind']}) gives embeddings, not concepts; "
                        "use Visual Search to find similar images") from exc
    concepts = list(row["concepts"])
    out = []
    for src, p in zip(images, probs):
        order = sorted(range(len(concepts)), key=lambda i: -float(p[i]))
        if service.multi_label(row):
            chosen = [i for i in order if float(p[i]) >= threshold]
        else:
            chosen = order[:max(1, int(top_k))]
        out.append({"image": _name(src), "concepts": [{"name": concepts[i], "probability": float(p[i])}
                                                      for i in chosen], "boxes": []})
    return out


def check_top_k(top_k: object) -> int:
    """``top_k`` as a whole number from 1 to MAX_TOP_K; UserError naming it otherwise."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float, str)):
        raise UserError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}")
    try:
        value = float(top_k)
    except ValueError:
        value = float("nan")
    if not value.is_integer() or not 1 <= value <= MAX_TOP_K:
        raise UserError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}")
    return int(value)


def check_threshold(threshold: Any, field: str = "threshold") -> float:
    """``threshold`` (anything a form or a request gave: whatever ``float()`` takes counts, NumPy scalars included) as
    a probability from 0 to 1; UserError naming it otherwise."""
    try:
        value = float(threshold) if not isinstance(threshold, bool) else float("nan")
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{field} must be a number from 0 to 1, got {threshold!r}")
    return value


def draw_predictions(user: User | str, model: str | int, images: Sequence[ImageSource], predictions: Sequence[dict],
                     folder: str | Path) -> list[Path]:
    """Write each image with its predicted boxes drawn (coloured by concept, with a legend) into ``folder`` as
    ``NAME_boxes.png`` (``NAME_2_boxes.png`` and so on when two images share a name); the paths written."""
    from core.evaluation.drawing import draw_boxes

    row = service.get(user, model)
    if row["kind"] != "detector":
        raise UserError(f"--out draws boxes: model {row['name']!r} is a {row['kind']}, not a detector")
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot make the folder ({exc.strerror or type(exc).__name__})") from None
    written: list[Path] = []
    for src, entry in zip(images, predictions, strict=True):
        stem = Path(_name(src)).stem or "image"
        path, n = out / f"{stem}_boxes.png", 1
        while path in written:
            n += 1
            path = out / f"{stem}_{n}_boxes.png"
        draw_boxes(open_image(src), entry["boxes"], row["concepts"]).save(path)
        written.append(path)
    return written


def above(boxes: Sequence[dict], score_threshold: float) -> list[dict]:
    """The boxes scoring above ``score_threshold`` (a page's slider over boxes predicted once at a lower one)."""
    return [b for b in boxes if float(b["score"]) > score_threshold]


def _box_concepts(boxes: Sequence[dict]) -> list[dict]:
    """A detector's concepts: each concept once, with its best box score."""
    best: dict[str, float] = {}
    for b in boxes:
        name, score = b.get("concept"), float(b.get("score", 0.0))
        if name is not None and score > best.get(name, -1.0):
            best[name] = score
    return [{"name": n, "probability": s} for n, s in sorted(best.items(), key=lambda kv: -kv[1])]
