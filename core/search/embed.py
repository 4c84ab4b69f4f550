"""Image embeddings for visual search: the general embedder or a stored model, in batches, L2-normalised.

Every model brings its own preprocessing (``LoadedModel.transform``: its image size, resize rule, mean and std), so
an index built with one model is only ever queried through that same model. A classifier embeds with its layer before
the classifier; an embedder with its embedding layer; detectors have no image embedding and are refused.

A batch is decoded and resized on one thread per core (PIL only, no torch ops), then normalised in one op and run
through the network on all cores, in turns (see ``embed_paths``). bench/bench_retrieval.py measures the ratio to the
network's own speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from core.device import cpu_threads
from core.errors import UserError
from core.models import GENERAL
from core.records import ModelRow
from core.users import User

BATCH_SIZE = 32  # images per forward pass: large enough to keep BLAS busy, small enough for ~200 MB of activations


def resolve_model(user: User | str, model: str | int) -> tuple[str, ModelRow | None]:
    """The model key an index records (``"general"`` or ``"model:<id>"``) and the stored model's row (None: general).

    Raises UserError for an unknown model or a detector (no image embedding).
    """
    if str(model).strip().lower() in (GENERAL, ""):
        return GENERAL, None
    from core.store import models as model_store

    row = model_store.get_model(user, model)
    if row["kind"] == "detector":
        raise UserError(f"model {row['name']!r} is a detector; build an index with an embedder, a classifier or "
                        f"'general'")
    return f"model:{row['id']}", row


def model_row(key: str) -> ModelRow | None:
    """The stored model behind a key (None for the general embedder); UserError when it was deleted."""
    if key == GENERAL:
        return None
    return _stored_model_row(key)


def _stored_model_row(key: str) -> ModelRow:
    """The stored model behind a ``model:<id>`` key; UserError for any other key or a deleted model."""
    if not key.startswith("model:"):
        raise UserError(f"Unknown embedding model key {key!r}; expected 'general' or 'model:<id>'")
    from core.store import models as model_store

    try:
        return model_store.get_model_by_id(int(key.split(":", 1)[1]))
    except UserError:
        raise UserError(f"The model this index was built with ({key}) no longer exists; rebuild the index with "
                        f"another model") from None


def model_label(key: str) -> str:
    """A readable name for a model key: ``general (EfficientNet-Lite0, ImageNet)`` or ``my-embedder (Clarifai_...)``."""
    if key == GENERAL:
        return "general (EfficientNet-Lite0, ImageNet)"
    try:
        row = _stored_model_row(key)
    except UserError:
        return f"{key} (deleted)"
    return f"{row['name']} ({row['kind']} {row['template']})"


def load_embedder(key: str):
    """The LoadedModel behind a model key on the inference device, loaded once per process and shared
    (``core.loaded``; reloaded when the model's files change). Never mutate it."""
    if key == GENERAL:
        from core.models.general import general_embedder

        return general_embedder()
    from core import loaded

    return loaded.model_dir(_stored_model_row(key)["path"])


def open_image(src: Any, name: str | None = None):
    """A PIL RGB image from a path, bytes, ``(name, bytes)``, a file-like object (an upload) or a PIL image.

    Everything but a PIL image is held to the importer's rules (allowed formats, the pixel limit
    ``import_max_pixels`` checked before decoding: ``core.data.decode.open_checked``); UserError naming the upload
    (``name``, the tuple's name, the file object's ``name`` or the path) otherwise.
    """
    from PIL import Image

    from core.data.decode import open_checked

    if isinstance(src, Image.Image):
        return src.convert("RGB")
    if isinstance(src, tuple) and len(src) == 2:
        name, src = name or str(src[0]), src[1]
    label = name or getattr(src, "name", None) or (str(src) if isinstance(src, (str, Path)) else "the image")
    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
        elif isinstance(src, (str, Path)):
            data = Path(src).read_bytes()
        elif hasattr(src, "read"):
            if hasattr(src, "seek"):
                src.seek(0)
            data = src.read()
        else:
            raise UserError(f"{label}: not an image (give a file, its bytes or an upload)")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UserError(f"{label}: file not found") from None
    except OSError as exc:
        raise UserError(f"{label}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not isinstance(data, (bytes, bytearray)):
        raise UserError(f"{label}: not an image (give a file, its bytes or an upload)")
    return open_checked(bytes(data), str(label))


def _open_stored(src: Any):
    """An item's stored image for an index (checked when it was imported, so a pixel limit lowered since does not
    make it unsearchable); anything else through :func:`open_image`."""
    if not isinstance(src, (str, Path)):
        return open_image(src)
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(src) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{src}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{src}: not a readable image: {exc}") from None


def embed_images(model, images: Sequence[Any]) -> np.ndarray:
    """Embeddings (N, D) of PIL images / paths / bytes: float32, L2-normalised rows."""
    return embed_paths(model, list(images))


def embed_paths(model, sources: Sequence[Any], batch_size: int = BATCH_SIZE,
                progress: Callable[[int, int, float], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Embed images given as paths (or anything ``open_image`` reads) in batches; float32, L2-normalised rows.

    Each batch is decoded and resized on one thread per core, then the network runs on all cores: one after the
    other, never side by side. On a CPU a decoding thread running beside the forward pass preempts one of its OpenMP
    threads and the whole pass waits for it (measured here: 0.80-0.86 of the plain forward with a prefetch thread,
    0.87-0.95 in turns; bench/README.md). ``progress(done, total, images_per_sec)`` is called after each batch; when
    ``should_stop()`` turns true the rows embedded so far are returned (fewer than ``len(sources)``).
    """
    dim = int(model.embedding_dim or 0)
    total = len(sources)
    out = np.empty((total, dim), np.float32) if dim else None
    if total == 0:
        return np.zeros((0, dim), np.float32)

    def prepare(source: Any) -> np.ndarray:  # decoding and PIL resizing only: no torch ops, the GIL released
        return model.pixels(_open_stored(source))

    done, t0 = 0, time.perf_counter()
    with ThreadPoolExecutor(max_workers=cpu_threads(), thread_name_prefix="embed-decode") as pool:
        for start in range(0, total, batch_size):
            u8 = np.stack(list(pool.map(prepare, sources[start:start + batch_size])))
            vecs = model.embed_tensor(model.input_from_pixels(u8)).cpu().numpy().astype(np.float32, copy=False)
            if out is None:
                out = np.empty((total, vecs.shape[1]), np.float32)
            out[start:start + len(vecs)] = vecs
            done = start + len(vecs)
            if progress is not None:
                progress(done, total, done / max(time.perf_counter() - t0, 1e-9))
            if should_stop is not None and should_stop() and done < total:
                break
    assert out is not None  # total > 0: the loop ran at least once
    return out[:done]
