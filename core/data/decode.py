"""Decode one image the way the store keeps it: verified, EXIF-oriented, RGB, content-addressed, with a thumbnail.

Runs in the import's worker processes, so it imports nothing but PIL, NumPy and ``core.fsutil`` (the one write helper)
and returns small dicts. :func:`open_checked` holds images from outside an import (uploads to Visual Search and to
prediction) to the same rules: the same allowed formats, the same pixel limit, checked before decoding.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.fsutil import tmp_name, write_file

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
    """Write a staged file atomically (temporary name, fsync, rename) unless it exists already.

    fsynced here, in the decoding processes, so that the commit that later renames it into the store publishes
    content that is on disk (the commit fsyncs the folders that receive it).
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name(path.name))
    write_file(tmp, data)
    os.replace(tmp, path)


def _stage(stored: Path, staged: Path, data: bytes | Callable[[], bytes]) -> None:
    """Put this import's own copy of a file into its staging area: a hard link to the store's file when the store has
    it (no bytes written, and the link keeps the content even if a delete removes the store's name meanwhile), else
    the bytes. The commit moves it in only when the store's file is gone by then."""
    if staged.exists():
        return
    staged.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(stored, staged)
        return
    except FileExistsError:
        return
    except OSError:  # not in the store (or removed since the check), or a file system without hard links
        pass
    _write_new(staged, data() if callable(data) else data)


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


class Refused(Exception):
    """An image the studio does not decode; the message says why (the importer's skip reason)."""


def _open_checked(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Open ``data`` lazily (the header only) and check it: an allowed format, within ``max_pixels``."""
    if not data:
        raise Refused("empty file")
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL refuses at open past twice this; we check exactly below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the exact check follows
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Refused("not an image (content not recognised as any image format)") from None
    except Image.DecompressionBombError:
        raise Refused(f"over the pixel limit of {max_pixels:,} (decompression bomb?)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on malformed headers; each is a refusal
        raise Refused(f"corrupt image header: {exc}") from None
    fmt = img.format or "unknown"
    if fmt not in ALLOWED_FORMATS:
        raise Refused(f"image format {fmt} is not allowed (allowed: {', '.join(sorted(ALLOWED_FORMATS))})")
    width, height = img.size
    if width * height > max_pixels:
        raise Refused(f"{width}x{height} is {width * height:,} pixels, over the pixel limit of {max_pixels:,} "
                      "(decompression bomb?)")
    if width < 1 or height < 1:
        raise Refused("image has no pixels")
    return img, fmt


def _decoded(img: Image.Image, fmt: str, max_pixels: int) -> tuple[Image.Image, int | None]:
    """Decode a checked image fully: (upright RGB image, EXIF orientation); Refused when it is truncated or corrupt."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            orientation = img.getexif().get(_ORIENTATION, 1) if fmt in ("JPEG", "MPO", "TIFF", "WEBP", "PNG") else 1
            oriented = ImageOps.exif_transpose(img) if orientation not in (1, None) else img
            return _to_rgb(oriented), orientation
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Refused(f"over the pixel limit of {max_pixels:,} (decompression bomb?)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Refused(f"truncated or corrupt image: {str(exc) or type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - any other decoder failure is a corrupt image, named
        raise Refused(f"truncated or corrupt image: {type(exc).__name__}: {exc}") from None


def open_checked(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """An upright RGB image from bytes that did not come through an import (an upload to search or predict), under
    the importer's rules: a format in ``ALLOWED_FORMATS`` (told by content), at most ``max_pixels`` (default: the
    setting ``import_max_pixels``) checked from the header before decoding, decoded whole.

    Raises:
        UserError: naming ``name`` (the upload's file name) and why, as the importer's skip reason says it.
    """
    from core.errors import UserError  # imported here: the import's worker processes never need it

    if max_pixels is None:
        from core import settings

        max_pixels = int(settings.get("import_max_pixels"))
    try:
        img, fmt = _open_checked(data, max_pixels)
        return _decoded(img, fmt, max_pixels)[0]
    except Refused as exc:
        hint = " (setting import_max_pixels)" if "pixel limit" in str(exc) else ""
        raise UserError(f"{name}: {exc}{hint}") from None


def process_bytes(data: bytes, stage_blobs: Path, stage_thumbs: Path, store_blobs: Path, store_thumbs: Path,
                  max_pixels: int) -> dict[str, Any]:
    """:func:`process_image` on bytes already read (video frames, generated samples)."""
    try:
        img, fmt = _open_checked(data, max_pixels)
        source_mode = img.mode
        rgb, orientation = _decoded(img, fmt, max_pixels)
    except Refused as exc:
        return {"skip": str(exc)}

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
    _stage(store_blobs / rel, stage_blobs / rel, stored)

    def thumb_bytes() -> bytes:
        tbuf = io.BytesIO()
        thumb.save(tbuf, "JPEG", quality=85)
        return tbuf.getvalue()

    trel = thumb_relpath(digest)
    _stage(store_thumbs / trel, stage_thumbs / trel, thumb_bytes)
    return {"hash": digest, "ext": ext, "width": rgb.width, "height": rgb.height, "grayscale": grayscale,
            "nbytes": len(stored), "format": fmt, "new": new}
