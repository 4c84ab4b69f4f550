"""Decode one image the way the store keeps it: verified, EXIF-oriented, RGB, content-addressed, with a thumbnail.

Runs in the import's worker processes, so it imports nothing but PIL and NumPy and returns small dicts.

Stored form (why): a JPEG source that is already RGB and upright is kept byte for byte after a full decode proved it
sound (no second loss, no time spent encoding); a JPEG that had to be rotated or converted (grayscale, CMYK) is
re-encoded as JPEG quality 95 without chroma subsampling (near-lossless, a fraction of PNG's size); every other
format (PNG, BMP, GIF, TIFF, WebP) was lossless or palette-based at the source and is stored as PNG so that no loss is
added. Every stored file opens in PIL as an RGB image of the oriented size recorded in the store.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Formats accepted, by the format PIL detects from the content (never by the file's extension).
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "GIF", "TIFF", "WEBP"})
THUMB_SIZE = 128
_ORIENTATION = 0x0112

ImageFile.LOAD_TRUNCATED_IMAGES = False


def blob_relpath(digest: str, ext: str) -> str:
    """Where a blob lives under the blobs folder: fanned out by the first two hex digits."""
    return f"{digest[:2]}/{digest}.{ext}"


def thumb_relpath(digest: str) -> str:
    return f"{digest[:2]}/{digest}.jpg"


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (a transparent background is not black)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def _is_grayscale(thumb: Image.Image, source_mode: str) -> bool:
    """Grayscale at the source, or colour channels that agree everywhere (checked on the thumbnail, cheap)."""
    if source_mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"):
        return True
    arr = np.asarray(thumb, dtype=np.int16)
    return bool(np.abs(arr[..., 0] - arr[..., 1]).max() <= 3 and np.abs(arr[..., 1] - arr[..., 2]).max() <= 3)


def _write_new(path: Path, data: bytes) -> None:
    """Write a file atomically (temporary name, then rename) unless it exists already."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def process_image(task: tuple[str, str, str, str, str, int]) -> dict[str, Any]:
    """Decode, verify, orient, convert and store one image into the staging folders.

    Args:
        task: (source file, staged blobs folder, staged thumbs folder, store blobs folder, store thumbs folder,
            pixel limit). Blobs and thumbnails already in the store are not written again.

    Returns:
        {"hash", "ext", "width", "height", "grayscale", "nbytes", "format", "new" (not in the store yet)} or
        {"skip": reason}.
    """
    src, stage_blobs, stage_thumbs, store_blobs, store_thumbs, max_pixels = task
    try:
        data = Path(src).read_bytes()
    except OSError as exc:
        return {"skip": f"unreadable: {exc.strerror or exc}"}
    return process_bytes(data, Path(stage_blobs), Path(stage_thumbs), Path(store_blobs), Path(store_thumbs),
                         max_pixels)


def process_bytes(data: bytes, stage_blobs: Path, stage_thumbs: Path, store_blobs: Path, store_thumbs: Path,
                  max_pixels: int) -> dict[str, Any]:
    """:func:`process_image` on bytes already read (video frames, generated samples)."""
    if not data:
        return {"skip": "empty file"}
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL refuses at open past twice this; we check exactly below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the exact check follows
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return {"skip": "not an image (content not recognised as any image format)"}
    except Image.DecompressionBombError:
        return {"skip": f"over the pixel limit of {max_pixels:,} (decompression bomb?)"}
    except Exception as exc:  # PIL raises many types on malformed headers
        return {"skip": f"corrupt image header: {exc}"}
    fmt = img.format or "unknown"
    if fmt not in ALLOWED_FORMATS:
        return {"skip": f"image format {fmt} is not allowed (allowed: {', '.join(sorted(ALLOWED_FORMATS))})"}
    width, height = img.size
    if width * height > max_pixels:
        return {"skip": f"{width}x{height} is {width * height:,} pixels, over the pixel limit of {max_pixels:,} "
                        "(decompression bomb?)"}
    if width < 1 or height < 1:
        return {"skip": "image has no pixels"}
    source_mode = img.mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            orientation = img.getexif().get(_ORIENTATION, 1) if fmt in ("JPEG", "MPO", "TIFF", "WEBP", "PNG") else 1
            oriented = ImageOps.exif_transpose(img) if orientation not in (1, None) else img
            rgb = _to_rgb(oriented)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return {"skip": f"over the pixel limit of {max_pixels:,} (decompression bomb?)"}
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        return {"skip": f"truncated or corrupt image: {reason}"}
    except Exception as exc:
        return {"skip": f"truncated or corrupt image: {type(exc).__name__}: {exc}"}

    if fmt == "JPEG" and source_mode == "RGB" and orientation in (1, None):
        stored, ext = data, "jpg"  # fully decoded above: sound, upright, RGB: keep the original bytes
    elif fmt in ("JPEG", "MPO"):
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=95, subsampling=0)
        stored, ext = buf.getvalue(), "jpg"
    else:
        buf = io.BytesIO()
        rgb.save(buf, "PNG", compress_level=3)
        stored, ext = buf.getvalue(), "png"
    digest = hashlib.sha256(stored).hexdigest()

    thumb = rgb.copy()
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    grayscale = _is_grayscale(thumb, source_mode)

    rel = blob_relpath(digest, ext)
    new = not (store_blobs / rel).exists()
    if new:
        _write_new(stage_blobs / rel, stored)
    trel = thumb_relpath(digest)
    if not (store_thumbs / trel).exists():
        tbuf = io.BytesIO()
        thumb.save(tbuf, "JPEG", quality=85)
        _write_new(stage_thumbs / trel, tbuf.getvalue())
    return {"hash": digest, "ext": ext, "width": rgb.width, "height": rgb.height, "grayscale": grayscale,
            "nbytes": len(stored), "format": fmt, "new": new}
