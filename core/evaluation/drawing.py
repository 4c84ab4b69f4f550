"""Boxes drawn on photos, coloured by concept, each labelled with its concept (and score), with a legend strip
under the photo: what the Models page, the HTML report and ``python -m core predict --out`` show of a detector."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

# plotly's D3 colours then more of Dark24: the same concept has the same colour in the charts and on the photos
PALETTE = ("#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22",
           "#17BECF", "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#B68100", "#750D86", "#EB663B",
           "#511CFB", "#00A08B")
LEGEND_ROW = 20  # pixels per legend row under the photo


def concept_colours(concepts: Sequence[str]) -> dict[str, str]:
    """Each concept's colour (hex), by its position in the model's concepts; the palette repeats past 20."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(concepts)}


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):  # a Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _open(image: Any) -> Image.Image:
    """A PIL image as RGB; a path or ``(name, bytes)`` through predict's checked opener (allowed formats, the pixel
    limit before decoding, a UserError naming the file), as every uploaded or stored image is opened."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    from core.evaluation.predict import open_image

    return open_image(image)


def draw_boxes(image: Any, boxes: Sequence[dict], concepts: Sequence[str], max_side: int = 640,
               legend: bool = True) -> Image.Image:
    """The photo (a path, ``(name, bytes)`` or a PIL image) scaled to at most ``max_side``, with ``boxes``
    ({"concept", "x", "y", "w", "h"[, "score"]} in the photo's pixels) drawn in their concept's colour, each labelled
    "concept score", and (``legend``) a strip under it naming the colours of the concepts drawn (or saying there is no
    box)."""
    im = _open(image)
    scale = min(1.0, max_side / max(im.size))
    if scale < 1.0:
        im = im.resize((round(im.width * scale), round(im.height * scale)))
    colours = concept_colours(concepts)
    font = _font(max(11, round(max(im.size) / 40)))
    draw = ImageDraw.Draw(im)
    width = max(2, round(max(im.size) / 200))
    for b in sorted(boxes, key=lambda b: float(b.get("score", 1.0))):  # the best box last, on top
        colour = colours.get(b["concept"], "#FFFFFF")
        x, y, w, h = (float(b[k]) * scale for k in ("x", "y", "w", "h"))
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)
        label = b["concept"] + (f" {float(b['score']):.2f}" if "score" in b else "")
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tw, th = right - left, bottom - top + 4
        ty = y - th if y - th >= 0 else y  # above the box, or inside it at the photo's top edge
        draw.rectangle([x, ty, x + tw + 4, ty + th], fill=colour)
        draw.text((x + 2 - left, ty + 2 - top), label, fill="white", font=font)
    if not legend:
        return im
    shown = [c for c in concepts if any(b["concept"] == c for b in boxes)]
    rows: list[list[str]] = [[]]
    used = 0
    for name in shown:
        need = 16 + int(draw.textlength(name, font=font)) + 12
        if rows[-1] and used + need > im.width:
            rows.append([])
            used = 0
        rows[-1].append(name)
        used += need
    out = Image.new("RGB", (im.width, im.height + LEGEND_ROW * len(rows)), "white")
    out.paste(im, (0, 0))
    pen = ImageDraw.Draw(out)
    if not shown:
        pen.text((4, im.height + 3), "no box", fill="#555555", font=font)
    for r, names in enumerate(rows):
        x, y = 4, im.height + LEGEND_ROW * r + 4
        for name in names:
            pen.rectangle([x, y, x + 11, y + 11], fill=colours[name])
            pen.text((x + 16, y - 1), name, fill="black", font=font)
            x += 16 + int(pen.textlength(name, font=font)) + 12
    return out
