"""A trained model on disk: ``weights.safetensors`` (tensors only, never a pickle) and ``config.json`` (template,
parameters, concepts, preprocessing and anything the trainer adds). :func:`load_model_dir` rebuilds the network from
the config and gives a :class:`LoadedModel` that predicts and embeds PIL images."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.device import channels_last_for
from core.errors import UserError
from core.fsutil import atomic_path, atomic_write_bytes, write_file
from core.models import GENERAL
from core.models.weights import state_mismatch

if TYPE_CHECKING:
    from core.models.networks import StudioNet

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
BATCH = 32


def save_model_dir(directory: str | Path, net: nn.Module, meta: dict) -> Path:
    """Write ``net``'s weights (safetensors) and ``meta`` plus the network facts (config JSON) into ``directory``.

    ``meta`` needs "kind", "template", "params" (validated) and "concepts" (list, in class-index order); anything
    else (dataset, metrics) is kept as is. A transfer classifier on another model's embedding also has "base"
    (``core.models.networks.base_description(base_config)``); its preprocessing is then the base's. Both files are
    written atomically.
    """
    from safetensors.torch import save

    from core.models.preprocess import preprocess_config

    for key in ("kind", "template", "params", "concepts"):
        if key not in meta:
            raise ValueError(f"save_model_dir: meta lacks {key!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(meta)
    config["format_version"] = FORMAT_VERSION
    base = base_of(meta)
    if meta.get("preprocess"):
        config["preprocess"] = meta["preprocess"]
    elif base and base.get("template") == GENERAL:
        from core.models.networks import general_preprocess

        config["preprocess"] = general_preprocess(int(meta["params"].get("image_size") or 224))
    elif base:
        config["preprocess"] = (base.get("preprocess")
                                or preprocess_config(base["kind"], base["template"], base["params"]))
    else:
        config["preprocess"] = preprocess_config(meta["kind"], meta["template"], meta["params"])
    config["embedding_dim"] = getattr(net, "embedding_dim", None)
    config["num_classes"] = len(meta["concepts"])
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE, what=f"model weights {directory / WEIGHTS_FILE}") as tmp:
        write_file(tmp, save(state, metadata={"format": "pt"}), fsync=False)  # the one write helper
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    atomic_write_bytes(directory / CONFIG_FILE, text.encode(), what=f"model configuration {directory / CONFIG_FILE}")
    return directory


def read_config(directory: str | Path) -> dict:
    """The model's ``config.json``; UserError naming the file when missing or unreadable."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"Model folder {directory} has no {CONFIG_FILE}; it is not a saved model.")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot read {path}: {exc}") from None
    missing = [k for k in ("kind", "template", "params", "concepts") if k not in config]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; it is not a model configuration of this studio.")
    return config


def load_model_dir(
    directory: str | Path, expect: tuple[str, str] | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Rebuild the model saved in ``directory``.

    Args:
        expect: (kind, template) the caller needs; a model of another template is refused.
    Raises:
        UserError: missing or corrupt files, weights that do not fit the template's network, wrong template.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from core.models.networks import build_network, build_on_base

    directory = Path(directory)
    config = read_config(directory)
    kind, template = config["kind"], config["template"]
    if expect is not None and tuple(expect) != (kind, template):
        raise UserError(
            f"Model in {directory} is a {kind}/{template}, not the {expect[0]}/{expect[1]} asked for; "
            "load it with its own template."
        )
    wpath = directory / WEIGHTS_FILE
    if not wpath.is_file():
        raise UserError(f"Model folder {directory} has no {WEIGHTS_FILE}; the weights are missing.")
    try:
        state = load_file(str(wpath), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"Cannot read {wpath}: not a valid safetensors file ({exc}). Weights are only read with safetensors; "
            "a pickled checkpoint is refused."
        ) from None
    params = dict(config["params"])
    base = base_of(config)
    net: nn.Module
    if base is not None:  # a transfer classifier on another model's embedding
        net = build_on_base(base, template, len(config["concepts"]))
    else:
        net = build_network(kind, template, params, len(config["concepts"]), load_weights=False)  # the saved ones
    own = net.state_dict()
    missing, unexpected, wrong = state_mismatch(own, state)
    if missing or unexpected or wrong:
        raise UserError(
            f"Weights in {wpath} do not belong to template {kind}/{template} with {len(config['concepts'])} concepts "
            f"(missing {missing[:2]}, unexpected {unexpected[:2]}, wrong shape {wrong[:2]})."
        )
    net.load_state_dict(state, strict=True)
    return LoadedModel(config, net.to(device).eval(), device=device)


def base_of(config: dict) -> dict | None:
    """The base-model description of a transfer classifier: ``config["base"]``, or derived from the trainer's
    ``config["base_model"]`` ({"id": "general"} or {"path": base model folder}); None for an ordinary model."""
    from core.models.networks import GENERAL_BASE, base_description

    if config.get("base"):
        return config["base"]
    ref = config.get("base_model")
    if not ref:
        return None
    if GENERAL in (ref.get("id"), ref.get("name")):
        return dict(GENERAL_BASE)
    if ref.get("path"):
        return base_description(read_config(ref["path"]))
    raise UserError(f"Model {config.get('name', '')!r} names a base model without a folder: {ref}")


class LoadedModel:
    """A model ready for inference: ``predict`` (probabilities or boxes) and ``embed`` (L2-normalised rows)."""

    def __init__(self, config: dict, net: nn.Module, device: str | torch.device = "cpu", can_predict: bool = True):
        from core.models.preprocess import make_transform

        self.config = config
        self.kind: str = config["kind"]
        self.template: str = config["template"]
        self.params: dict = dict(config["params"])
        self.concepts: list[str] = list(config["concepts"])
        self.preprocess: dict = dict(config["preprocess"])
        self.net = net.eval()
        self.device = torch.device(device)
        # channels_last as in training (1.3-1.4x for EfficientNet-Lite0 inference at 160-224 px on this CPU)
        self.channels_last = channels_last_for(self.device, int(self.preprocess.get("image_size") or 0),
                                               self.kind == "detector")
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.can_predict = can_predict
        self._together = _Together()
        self.embedding_dim: int | None = getattr(net, "embedding_dim", None)
        self.transform = make_transform(self.preprocess, train=False)
        self._mean = torch.tensor(self.preprocess["mean"], dtype=torch.float32, device=self.device)
        self._std = torch.tensor(self.preprocess["std"], dtype=torch.float32, device=self.device)

    def pixels(self, image) -> np.ndarray:
        """A PIL image after this model's eval resize, (H, W, 3) uint8: PIL work only (it releases the GIL), so
        several images can be prepared on threads at once (not for detectors)."""
        from core.models.preprocess import resize_pil

        return resize_pil(image, int(self.preprocess["image_size"]), self.preprocess["resize"])[0]

    def input_from_pixels(self, u8: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 from ``pixels`` -> the normalised batch the network takes; equals stacking
        ``transform`` of each image."""
        from core.models.preprocess import to_input

        return to_input(torch.from_numpy(u8), self._mean, self._std, self.device, self.channels_last)

    def __repr__(self) -> str:
        return f"LoadedModel({self.kind}/{self.template}, {len(self.concepts)} concepts, dim={self.embedding_dim})"

    def _studio_net(self) -> StudioNet:
        """The network as what it is whenever it embeds or outputs cosines: a StudioNet (detectors do neither)."""
        return cast("StudioNet", self.net)

    def _batches(self, images: Sequence[Any]):
        """Every BATCH images as one input batch: several images given together run through the network in one
        pass. Their resizing (PIL, the GIL released) runs on ``_prepare_pool``'s threads, one image each."""
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            prepared = _prepare_pool().map(self.pixels, chunk) if len(chunk) > 1 else [self.pixels(chunk[0])]
            yield self.input_from_pixels(np.stack(list(prepared)))

    @torch.inference_mode()
    def logits(self, images: Sequence[Any]) -> torch.Tensor:
        """Raw outputs (B, C): logits, or cosines for angular-margin embedders."""
        outs = [self.net(x).float().cpu() for x in self._batches(images)]
        return torch.cat(outs) if outs else torch.zeros(0, len(self.concepts))

    def probabilities_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if getattr(self.net, "output", "logits") == "cosine":
            return torch.softmax(logits * self._studio_net().logit_scale, dim=1)
        if int(self.params.get("logreg", 0) or 0) == 1:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)

    def predict(self, images: Sequence[Any], score_threshold: float | None = None) -> np.ndarray | list[dict]:
        """Probabilities (N, C) in concept order (sigmoid with logreg 1, else softmax); detectors: one dict per image
        {"boxes": [{"concept", "x", "y", "w", "h", "score"}]} with scores above ``score_threshold`` (default the
        template's detection_score_threshold; the network itself drops boxes under min(that, 0.05))."""
        if not self.can_predict:
            raise UserError(f"{self.template} is an embedding model without concepts; it cannot predict.")
        if self.kind == "detector":
            return self._detect(images, score_threshold)
        return self.probabilities_from_logits(self.logits(images)).numpy()

    def predict_together(self, images: Sequence[Any]) -> np.ndarray | list[dict]:
        """``predict``, with the images of calls that arrive while the network is busy run as one batch.

        A server thread calls this for one request's images. When the model is idle they run at once (no waiting for
        company); while it runs, arriving calls queue, and the next pass takes them all together (up to BATCH images,
        then the rest in the pass after): one forward pass for several requests instead of one each, and one pass at
        a time per model. Each caller gets its own rows back. Detectors (images of any size) predict alone.
        """
        if self.kind == "detector" or not len(images):
            return self.predict(images)
        return self._together.run(list(images), self.predict)

    @torch.inference_mode()
    def _detect(self, images: Sequence[Any], score_threshold: float | None = None) -> list[dict]:
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        results = []
        for start in range(0, len(images), BATCH):
            batch = [self.transform(im).to(self.device) for im in images[start : start + BATCH]]
            for out in self.net(batch):
                boxes = []
                for (x1, y1, x2, y2), label, score in zip(
                    out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()
                ):
                    if not score > threshold:  # "above" the threshold, as the glossary says
                        continue
                    boxes.append(
                        {"concept": self.concepts[label - 1], "x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1,
                         "score": score}
                    )
                results.append({"boxes": boxes})
        return results

    @property
    def score_threshold(self) -> float:
        """A detector's detection_score_threshold: it returns boxes scoring above it."""
        return float(self.params.get("detection_score_threshold", 0.0) or 0.0)

    @torch.inference_mode()
    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of a preprocessed batch; averaged with the mirror image when the template's
        average_horizontal_flips is on."""
        net = self._studio_net()
        e = net.embed(x).float()
        if _truthy(self.params.get("average_horizontal_flips")):
            e = F.normalize(e, dim=1) + F.normalize(net.embed(torch.flip(x, dims=[3])).float(), dim=1)
        return F.normalize(e, dim=1)

    def embed(self, images: Sequence[Any]) -> np.ndarray:
        """Embeddings (N, D), float32, L2-normalised rows."""
        if self.kind == "detector":
            raise UserError(f"{self.template} is a detector; it has no image embedding.")
        outs = [self.embed_tensor(x).cpu() for x in self._batches(images)]
        if not outs:
            return np.zeros((0, self.embedding_dim or 0), dtype=np.float32)
        return torch.cat(outs).numpy().astype(np.float32, copy=False)


class _Call:
    """One caller's images waiting in a ``_Together`` queue, and then its rows (or the error of its pass)."""

    def __init__(self, images: list[Any]):
        self.images = images
        self.rows: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class _Together:
    """Calls that arrive while a pass runs go into the next pass together (continuous batching, no timer): one
    caller at a time leads a pass over everything queued (up to BATCH images) while the others wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[_Call] = []
        self._running = False
        self.passes = 0  # forward passes run so far (several calls may share one)

    def run(self, images: list[Any], fn) -> np.ndarray:
        call = _Call(images)
        with self._cond:
            self._queue.append(call)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: call.done or not self._running)
                if call.done:
                    break
                self._running = True
                batch: list[_Call] = []
                size = 0
                while self._queue and (not batch or size + len(self._queue[0].images) <= BATCH):
                    batch.append(self._queue.pop(0))
                    size += len(batch[-1].images)
                self.passes += 1
            try:
                rows = fn([im for c in batch for im in c.images])
                start = 0
                for c in batch:
                    c.rows, start = rows[start:start + len(c.images)], start + len(c.images)
            except BaseException as exc:  # noqa: BLE001 - every caller of the pass gets its error
                for c in batch:
                    c.error = exc
            finally:
                with self._cond:
                    for c in batch:
                        c.done = True
                    self._running = False
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        assert call.rows is not None
        return call.rows


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _prepare_pool() -> ThreadPoolExecutor:
    """The process's threads that resize images for a batch (``core.device.cpu_threads()`` of them), made once."""
    global _pool
    with _pool_lock:
        if _pool is None:
            from core.device import cpu_threads

            _pool = ThreadPoolExecutor(max_workers=cpu_threads(), thread_name_prefix="predict-prepare")
        return _pool


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)
