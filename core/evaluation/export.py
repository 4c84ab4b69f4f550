"""Export a stored model (zip, TorchScript, ONNX) and import an exported zip back, checking it on the way in.

The zip holds ``weights.safetensors``, ``config.json`` (template, parameters, concepts, preprocessing),
``concepts.txt``, ``preprocess.json`` and ``predict_example.py``. TorchScript and ONNX files hold one network that
takes a normalised (B, 3, H, W) batch and returns probabilities (classifiers) or L2-normalised embeddings
(embedders); each export is run once against the original and refused if they differ by more than ``TOLERANCE``.
Detectors export as a zip or as ONNX (one (3, H, W) image in [0, 1] of any size in; boxes, labels, scores out),
checked for the same detections on one of their dataset's images.

Every export describes itself, so a client needs nothing but the file: :func:`describe` builds the one description
(kind, template, concepts in output order, input size, colour order, mean and std, resize rule, what the output is,
the studio's version) and the three formats carry it in the same words: ONNX ``metadata_props`` and TorchScript
``_extra_files`` hold :func:`metadata_entries` (``description``: all of it as one JSON object, and each key on its
own: text as is, numbers and lists as JSON), the zip's ``config.json`` holds it under ``description``.
Weights are only ever read with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path

from core import paths
from core.errors import UserError
from core.evaluation import service
from core.fsutil import atomic_write_bytes
from core.models import GENERAL
from core.records import ModelRow
from core.users import User, as_user, require_role

FORMATS = ("zip", "torchscript", "onnx")
TOLERANCE = 1e-4  # largest difference allowed between the exported and the original network's outputs
ARCHIVE_MEMBERS = ("weights.safetensors", "config.json", "concepts.txt", "preprocess.json", "predict_example.py")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
MAX_ARCHIVE_BYTES = 4 * 2**30  # 4 GiB uncompressed: larger than any template's weights, small enough to refuse bombs
DESCRIPTION_VERSION = 1  # bumped when a key of the description changes meaning
DESCRIPTION_KEY = "description"  # the metadata entry / extra file / config.json key holding the whole description


def _output_mode(row: ModelRow) -> str:
    return "embedding" if row["kind"] == "embedder" else "probabilities"


def _activation(loaded) -> str:
    """How a classifier's outputs become probabilities: "softmax" (one concept per image; angular-margin heads:
    softmax of the scaled cosines) or "sigmoid" (logreg 1: each concept on its own)."""
    if getattr(loaded.net, "output", "logits") == "cosine":
        return "softmax"
    return "sigmoid" if service.multi_label({"params": loaded.params}) else "softmax"


def _resize_rule(resize: str, size: int) -> str:
    """The eval resize of ``core.models.preprocess.resize_pil`` in words a client can follow exactly."""
    if resize == "square":
        return (f"resize the upright RGB image to {size} x {size} with PIL's Image.resize(..., Image.BICUBIC) "
                "(aspect ratio not kept)")
    if resize == "short_side_crop":
        return (f"resize with PIL's Image.resize(..., Image.BICUBIC) so the short side is {size} and the long side "
                f"int({size} * long / short) (truncated), then crop the centre {size} x {size}: left = "
                f"round((width - {size}) / 2), top = round((height - {size}) / 2), rounding halves to even "
                "(Python's round)")
    return (f"none: give the whole upright RGB image; the graph resizes it so its short side is {size} and its long "
            f"side at most {round(size * 5 / 3)} (aspect ratio kept) and returns boxes in the input's pixels")


def describe(loaded, name: str | None = None, output: str | None = None) -> dict:
    """What an exported network is, in plain JSON values: every export carries exactly this (see the module doc).

    Args:
        loaded: the model (``core.models.io.LoadedModel``: its config, network and preprocessing).
        name: the model's name (default: the config's).
        output: "probabilities" or "embedding" for a classifier or embedder (default: by kind: an embedder's file
            gives embeddings, a classifier's probabilities); a detector's is always "boxes, labels, scores".
    """
    import core

    config = loaded.config
    kind = config["kind"]
    pre = dict(config["preprocess"])
    size = int(pre["image_size"])
    concepts = list(config.get("concepts") or [])
    if kind == "detector":
        output = "boxes, labels, scores"
    output = output or ("embedding" if kind == "embedder" else "probabilities")
    if output not in ("probabilities", "embedding", "boxes, labels, scores"):
        raise ValueError(f"Unknown output {output!r}; choose probabilities or embedding")
    dim = getattr(loaded, "embedding_dim", None) or config.get("embedding_dim")
    out = {
        "studio": "Deep Training Studio",
        "studio_version": core.__version__,
        "description_version": DESCRIPTION_VERSION,
        "name": name or config.get("name") or config["template"],
        "kind": kind,
        "template": config["template"],
        "concepts": concepts,
        "input_name": "image",
        "input_shape": [3, "height", "width"] if kind == "detector" else ["batch", 3, size, size],
        "input_size": size,
        "colour_order": "RGB",
        "orientation": "upright: the EXIF orientation applied, transparency composited on white",
        "pixel_scale": "8-bit values divided by 255 (0 to 1)",
        "mean": [float(v) for v in pre["mean"]],
        "std": [float(v) for v in pre["std"]],
        "normalisation": ("none by the client: the graph normalises with mean and std itself" if kind == "detector"
                          else "(pixel / 255 - mean) / std per channel, by the client"),
        "resize": pre["resize"],
        "resize_rule": _resize_rule(pre["resize"], size),
        "output": output,
    }
    if output == "probabilities":
        activation = _activation(loaded)
        out["output_activation"] = activation
        out["output_rule"] = (f"output (batch, {len(concepts)}): the probability of each concept, in the order of "
                              "concepts; " + ("sigmoid: each concept on its own (several may pass a threshold)"
                                              if activation == "sigmoid" else "softmax: a row sums to 1"))
    elif output == "embedding":
        flips = str(loaded.params.get("average_horizontal_flips", "")).strip().lower() in {"1", "true", "yes", "on"}
        out["output_activation"] = "l2_normalise"
        out["output_rule"] = (f"output (batch, {dim}): an L2-normalised embedding of dimension {dim} (cosine "
                              "similarity is the dot product)" + ("; the mirror image's embedding is averaged in, "
                                                                  "inside the graph" if flips else ""))
    else:
        out["output_activation"] = "none"
        out["output_rule"] = ("boxes (N, 4): x1, y1, x2, y2 in the input's pixels; labels (N,): concept index + 1 "
                              "(label i is concepts[i - 1]); scores (N,) in 0 to 1, every detection (the studio "
                              "keeps those above detection_score_threshold)")
        out["labels"] = "concept index + 1"
        out["detection_score_threshold"] = loaded.score_threshold
    out["embedding_dim"] = dim
    return out


def metadata_entries(description: dict) -> dict[str, str]:
    """The description as the string pairs ONNX ``metadata_props`` and TorchScript ``_extra_files`` hold:
    ``description`` (the whole object as JSON) first, then each key on its own (text as is, anything else as JSON)."""
    entries = {DESCRIPTION_KEY: json.dumps(description)}
    for key, value in description.items():
        entries[key] = value if isinstance(value, str) else json.dumps(value)
    return entries


def exported_module(loaded, mode: str):
    """An ``nn.Module`` from a normalised batch to probabilities or L2-normalised embeddings."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    net = loaded.net
    cosine = getattr(net, "output", "logits") == "cosine"
    scale = float(getattr(net, "logit_scale", 1.0))
    sigmoid = _activation(loaded) == "sigmoid"
    flips = str(loaded.params.get("average_horizontal_flips", "")).strip().lower() in {"1", "true", "yes", "on"}

    class Exported(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if mode == "embedding":
                e = self.net.embed(x)
                if flips:
                    e = F.normalize(e, dim=1) + F.normalize(self.net.embed(torch.flip(x, dims=[3])), dim=1)
                return F.normalize(e, dim=1)
            logits = self.net(x)
            if cosine:
                return torch.softmax(logits * scale, dim=1)
            return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)

    return Exported().eval()


def _example_batch(loaded, n: int = 2):
    import torch

    size = int(loaded.preprocess["image_size"])
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _check_close(what: str, expected, got) -> float:
    import numpy as np

    diff = float(np.abs(np.asarray(expected) - np.asarray(got)).max())
    if not diff <= TOLERANCE:
        raise UserError(f"{what} export differs from the original network by {diff:.2e} (allowed {TOLERANCE:.0e}); "
                        "it was not written")
    return diff


def _on_cpu(loaded, row: ModelRow):
    """The model on the CPU: exports trace there (a model served from a GPU is loaded again, not moved: it is
    shared)."""
    if getattr(loaded, "device", None) is None or loaded.device.type == "cpu":
        return loaded
    from core.models.io import load_model_dir

    return load_model_dir(row["path"])


def export_model(user: User | str, model: str | int, fmt: str = "zip", out: str | Path = "") -> dict:
    """Write the model to ``out`` as ``fmt`` (zip | torchscript | onnx), described as :func:`describe` says.

    Returns {"model", "kind", "format", "path", "bytes", "max_diff"} (detector ONNX: also "detections").
    """
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    row = service.get(user, model)
    out = Path(out or f"{row['name']}.{ {'zip': 'zip', 'torchscript': 'pt', 'onnx': 'onnx'}[fmt] }")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {"model": row["name"], "kind": row["kind"], "format": fmt, "path": str(out)}
    if fmt == "zip":
        atomic_write_bytes(out, archive_bytes(row), what=f"the export of model {row['name']!r} ({out})")
        return {**done, "bytes": out.stat().st_size, "max_diff": 0.0}
    if row["kind"] == "detector":
        if fmt != "onnx":
            raise UserError(f"model {row['name']!r}: {fmt} export covers classifiers and embedders; detectors export "
                            "as a zip or ONNX (their custom box heads do not script)")
        result = _export_detector_onnx(row, out)
        return {**done, "bytes": out.stat().st_size, **result}
    loaded = _on_cpu(service.load_model(row), row)
    diff = export_network(loaded, fmt, out, describe(loaded, row["name"]))
    return {**done, "bytes": out.stat().st_size, "max_diff": diff}


def export_network(loaded, fmt: str, out: str | Path, description: dict) -> float:
    """Write a classifier's or embedder's network (on the CPU) to ``out`` as TorchScript or ONNX, carrying
    ``description`` (its "output" says which: probabilities or embeddings); checked against the original on a
    seeded batch and refused beyond ``TOLERANCE``. Written atomically; returns the largest difference."""
    import torch

    if fmt not in ("torchscript", "onnx"):
        raise ValueError(f"export_network writes torchscript or onnx, not {fmt!r}")
    out = Path(out)
    module = exported_module(loaded, "embedding" if description["output"] == "embedding" else "probabilities")
    x = _example_batch(loaded)
    with torch.inference_mode():
        expected = module(x).numpy()
    entries = metadata_entries(description)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        if fmt == "torchscript":
            diff = _to_torchscript(module, x, expected, tmp, entries)
        else:
            diff = _to_onnx(module, x, expected, tmp, entries)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


def _to_torchscript(module, x, expected, path: Path, entries: dict[str, str]) -> float:
    import warnings

    import torch

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.", category=FutureWarning)  # still the portable format
    try:
        with torch.no_grad():
            traced = torch.jit.trace(module, x, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files=entries)
    except Exception as exc:
        raise UserError(f"TorchScript export is not possible for this network ({type(exc).__name__}: {exc})") from exc
    reloaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return _check_close("TorchScript", expected, reloaded(x).numpy())


def _set_onnx_metadata(path: Path, entries: dict[str, str]) -> None:
    """Write ``entries`` into the ONNX file's ``metadata_props`` (replacing any of the same keys)."""
    import onnx

    model = onnx.load(str(path))
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for key, value in [*keep, *entries.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def _to_onnx(module, x, expected, path: Path, entries: dict[str, str]) -> float:
    import warnings

    import torch

    # The TorchScript-based exporter: it handles every classifier/embedder network here without onnxscript's
    # dynamo tracing (slower, and stricter about timm's padding helpers).
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
    try:
        torch.onnx.export(module, (x,), str(path), input_names=["image"], output_names=["output"],
                          dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    except Exception as exc:
        raise UserError(f"ONNX export is not possible for this network ({type(exc).__name__}: {exc})") from exc
    _set_onnx_metadata(path, entries)
    session = _onnxruntime_session(path)
    if session is None:
        return float("nan")
    got = session.run(None, {"image": x.numpy()})[0]
    return _check_close("ONNX", expected, got)


def _onnxruntime_session(path: Path):
    """An onnxruntime session on the file, or None where onnxruntime is not installed (the file's structure is then
    checked only: comparing outputs needs onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        import onnx

        onnx.checker.check_model(str(path))
        return None
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------ detectors

BOX_TOLERANCE_PX = 0.01  # largest box-corner difference allowed between an exported detector and the original
SCORE_TOLERANCE = 1e-4


def _detector_example(row: ModelRow, loaded):
    """A (3, H, W) float image in [0, 1] as the detector takes it: the first held-out image with boxes of the
    model's dataset (detections to compare), else a seeded random image."""
    import torch

    from core.store import datasets as ds

    dataset = service._dataset_or_none(row)
    if dataset is not None:
        for split in (ds.eval_split(dataset["id"]), "train"):
            records = [r for r in ds.dataset_records(dataset["id"], split) if r["boxes"]]
            if records:
                return loaded.transform(service.open_images([records[0]["path"]])[0])
    return torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(0))


def _export_detector_onnx(row: ModelRow, out: Path) -> dict:
    """ONNX of a detector: input ``image`` (3, H, W) RGB in [0, 1], any size (the graph normalises and resizes as
    the network does); outputs ``boxes`` (N, 4) x1, y1, x2, y2 in input pixels, ``labels`` (N,) = concept index + 1
    (the concepts in the file's metadata, ``concepts``, with the rest of :func:`describe`), ``scores`` (N,). Checked
    on one image against the original: the same detections, corners within BOX_TOLERANCE_PX."""
    import warnings

    import torch

    loaded = _on_cpu(service.load_model(row), row)
    net = loaded.net.eval()
    image = _detector_example(row, loaded)
    with torch.inference_mode():
        ref = {k: v.numpy() for k, v in net([image])[0].items()}
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            detections = {"boxes": {0: "detections"}, "labels": {0: "detections"}, "scores": {0: "detections"}}
            with warnings.catch_warnings():  # tracer and opset notes about torchvision's code, not the user's
                warnings.simplefilter("ignore")
                torch.onnx.export(net, ([image],), str(tmp), input_names=["image"],
                                  output_names=["boxes", "labels", "scores"], opset_version=17, dynamo=False,
                                  dynamic_axes={"image": {1: "height", 2: "width"}, **detections})
        except Exception as exc:
            raise UserError(f"ONNX export is not possible for this detector ({type(exc).__name__}: {exc})") from exc
        _set_onnx_metadata(tmp, metadata_entries(describe(loaded, row["name"])))
        diff = _check_detections(tmp, image.numpy(), ref)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "format": "onnx", "max_diff": diff, "detections": len(ref["scores"])}


def match_detections(ref: dict, got: dict) -> tuple[float, float] | None:
    """Match two detectors' outputs as sets: each of ``ref``'s detections (``boxes`` (N, 4), ``labels``, ``scores``)
    is paired with one of ``got``'s of the same label, the closest box first. Detections with equal scores come in
    no defined order (ONNX Runtime and PyTorch sort ties differently), so position says nothing. Returns the largest
    box-corner and score differences of the pairing, or None when the counts or the labels differ."""
    import numpy as np

    ref_boxes, got_boxes = np.asarray(ref["boxes"], dtype=float), np.asarray(got["boxes"], dtype=float)
    ref_labels, got_labels = np.asarray(ref["labels"]), np.asarray(got["labels"])
    ref_scores, got_scores = np.asarray(ref["scores"], dtype=float), np.asarray(got["scores"], dtype=float)
    if len(ref_labels) != len(got_labels) or sorted(ref_labels.tolist()) != sorted(got_labels.tolist()):
        return None
    free = np.ones(len(got_labels), dtype=bool)
    box_diff = score_diff = 0.0
    for i in range(len(ref_labels)):
        candidates = np.flatnonzero(free & (got_labels == ref_labels[i]))
        corners = np.abs(got_boxes[candidates] - ref_boxes[i]).max(axis=1)
        j = candidates[int(np.argmin(corners))]
        free[j] = False
        box_diff = max(box_diff, float(corners.min()))
        score_diff = max(score_diff, abs(float(got_scores[j] - ref_scores[i])))
    return box_diff, score_diff


def _check_detections(path: Path, image, ref: dict) -> float:
    session = _onnxruntime_session(path)
    if session is None:
        return float("nan")
    boxes, labels, scores = session.run(["boxes", "labels", "scores"], {"image": image})
    matched = match_detections(ref, {"boxes": boxes, "labels": labels, "scores": scores})
    if matched is None:
        raise UserError(f"ONNX export finds {len(scores)} boxes where the original finds {len(ref['scores'])} (or "
                        "other concepts); it was not written")
    diff, score_diff = matched
    if not (diff <= BOX_TOLERANCE_PX and score_diff <= SCORE_TOLERANCE):
        raise UserError(f"ONNX export differs from the original detector by {diff:.2e} px in its boxes and "
                        f"{score_diff:.2e} in its scores (allowed {BOX_TOLERANCE_PX} px, {SCORE_TOLERANCE:.0e}); "
                        "it was not written")
    return diff


def _detector_onnx_snippet(row: ModelRow) -> str:
    """A detector's ONNX example program: each image's boxes as (concept, score, [x, y, w, h]) in image pixels."""
    threshold = float((row.get("params") or {}).get("detection_score_threshold", 0.0) or 0.0)
    return (
        '"""Detect with the exported ONNX model: python predict.py MODEL.onnx IMAGE..."""\n'
        "import json\nimport sys\n\nimport numpy as np\nimport onnxruntime as ort\nfrom PIL import Image\n\n"
        "session = ort.InferenceSession(sys.argv[1])\n"
        "CONCEPTS = json.loads(session.get_modelmeta().custom_metadata_map['concepts'])  # label i is CONCEPTS[i - 1]\n"
        f"THRESHOLD = {threshold!r}  # the model's detection_score_threshold\n\n"
        "for path in sys.argv[2:]:\n"
        "    image = np.asarray(Image.open(path).convert('RGB'), np.float32).transpose(2, 0, 1) / 255.0  # any size\n"
        "    boxes, labels, scores = session.run(['boxes', 'labels', 'scores'], {'image': image})\n"
        "    print(path, [(CONCEPTS[label - 1], round(float(score), 3), [round(float(x1)), round(float(y1)),\n"
        "                  round(float(x2 - x1)), round(float(y2 - y1))])\n"
        "                 for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores) if score > THRESHOLD])\n"
    )


# ------------------------------------------------------------------------------------------------ zip


def archive_bytes(row: ModelRow) -> bytes:
    """The model as an export zip, in memory (weights, config, concepts, preprocessing, example)."""
    folder = Path(row["path"])
    weights = service.weights_file(row)
    from core.models.io import read_config

    config = read_config(folder)
    config["export"] = {"app": "Deep Training Studio", "model_name": row["name"], "model_id": row["id"],
                        "dataset_id": row.get("dataset_id"), "dataset_version": row.get("dataset_version"),
                        "output": _output_mode(row)}
    config[DESCRIPTION_KEY] = describe(service.load_model(row), row["name"])  # as the ONNX and TorchScript files
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(weights, "weights.safetensors")
        zf.writestr("config.json", json.dumps(config, indent=2, sort_keys=True, default=str))
        zf.writestr("concepts.txt", "\n".join(config["concepts"]) + "\n")
        zf.writestr("preprocess.json", json.dumps(config["preprocess"], indent=2))
        zf.writestr("predict_example.py", snippet(row, "zip"))
    return buf.getvalue()


def snippet(row: ModelRow, fmt: str) -> str:
    """A short Python program that loads the exported model and predicts on image files given as arguments."""
    detector = row["kind"] == "detector"
    if fmt == "zip":
        loop = ((  # boxes as (concept, score, [x, y, w, h]) in image pixels
            "for path, found in zip(sys.argv[2:], model.predict([open_image(p) for p in sys.argv[2:]])):\n"
            "    print(path, [(b['concept'], round(b['score'], 3), [round(b[k]) for k in 'xywh']) "
            "for b in found['boxes']])\n") if detector else (
            "for path, probs in zip(sys.argv[2:], model.predict([open_image(p) for p in sys.argv[2:]])):\n"
            "    best = sorted(zip(model.concepts, probs), key=lambda cp: -cp[1])[:5]\n"
            "    print(path, [(c, round(float(p), 4)) for c, p in best])\n"))
        return (
            '"""Load this export with Deep Training Studio\'s code (run from its folder) and predict.\n\n'
            'python predict_example.py MODEL.zip IMAGE...\n"""\n'
            "import sys\n\n"
            "from core.evaluation.export import load_archive\n"
            "from core.evaluation.predict import open_image\n\n"
            "model = load_archive(sys.argv[1])  # checks the template; weights are read with safetensors only\n"
            + loop
        )
    if detector:
        return _detector_onnx_snippet(row)
    load = ("import onnxruntime as ort\n\n"
            "session = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
            "D = json.loads(session.get_modelmeta().custom_metadata_map['description'])  # the file describes itself\n"
            "run = lambda x: session.run(None, {'image': x})[0]\n") if fmt == "onnx" else (
        "import torch\n\n"
        "extra = {'description': ''}\n"
        "net = torch.jit.load(sys.argv[1], map_location='cpu', _extra_files=extra)\n"
        "D = json.loads(extra['description'])  # the file describes itself\n"
        "run = lambda x: net(torch.from_numpy(x)).detach().numpy()\n")
    return (
        f'"""Predict with the exported {fmt} model: python predict.py MODEL IMAGE...\n\n'
        'The file carries its description (input size, resize rule, mean and std, concepts, output); nothing else is\n'
        'needed."""\n'
        "import json\nimport sys\n\nimport numpy as np\nfrom PIL import Image, ImageOps\n\n"
        f"{load}\n\n{CLIENT_PREPROCESS}\n\n"
        "for path in sys.argv[2:]:\n"
        "    out = run(preprocess(path, D))[0]\n"
        "    if D['output'] == 'embedding':\n"
        "        print(path, 'embedding', out.shape, out[:4])\n"
        "    else:\n"
        "        print(path, [(D['concepts'][i], round(float(out[i]), 4)) for i in np.argsort(-out)[:5]])\n"
    )


# A plain client's preprocessing, as the description says it (the exports' and the search bundle's examples share it;
# it uses PIL and NumPy only and equals core.models.preprocess.resize_pil + to_input for classifiers and embedders).
CLIENT_PREPROCESS = '''def load_rgb(path):
    """The photo upright (EXIF orientation applied), RGB, transparency composited on white."""
    im = ImageOps.exif_transpose(Image.open(path))
    rgba = im.convert("RGBA")
    rgb = Image.new("RGB", im.size, (255, 255, 255))
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    return rgb


def preprocess(path, d):
    """The network's input for one photo as the description ``d`` says: (1, 3, S, S) float32."""
    im, s = load_rgb(path), d["input_size"]
    if d["resize"] == "square":
        im = im.resize((s, s), Image.BICUBIC)
    else:  # short_side_crop: the short side to s (the long side truncated), then the centre s x s
        w, h = im.size
        w, h = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        im = im.resize((w, h), Image.BICUBIC)
        left, top = round((w - s) / 2), round((h - s) / 2)
        im = im.crop((left, top, left + s, top + s))
    x = (np.asarray(im, np.float32) / 255.0 - np.float32(d["mean"])) / np.float32(d["std"])
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
'''


def _safe_state_from_pickle(name: str, data: bytes) -> dict:
    """Tensors from a PyTorch checkpoint, read with ``weights_only=True``: a pickle carrying code is refused."""
    import pickle

    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as exc:
        raise UserError(f"{name}: refused; it is a pickle that carries code or objects other than tensors "
                        "(only safetensors files or plain tensor checkpoints are loaded)") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{name}: not a dictionary of tensors (a state dict); cannot use it as model weights")
    return state


MAX_CONFIG_BYTES = 16 * 2**20  # config.json: 50,000 concepts of 200 characters fit several times over
MAX_CONCEPTS = 50_000  # a 2048-d head for 50,000 concepts is 400 MB of weights; more is no model anyone trains here
MAX_CONCEPT_CHARS = 1000
MAX_NAME_CHARS = 100
_RESIZES = ("short_side_crop", "square", "detector")


def _refuse(field: str, what: str) -> UserError:
    return UserError(f"archive: config.json: {field} {what}; it is not a model this studio exported, or it was "
                     "changed since")


def _check_preprocess(pre: object, kind: str, size_spec) -> dict:
    """The preprocessing an archive declares: a known resize, an image size within the template's bounds, three
    finite means and three finite positive standard deviations."""
    import math

    if not isinstance(pre, dict):
        raise _refuse("preprocess", "must be an object with image_size, resize, mean and std")
    size = pre.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or not size_spec.min <= size <= size_spec.max:
        raise _refuse("preprocess.image_size", f"must be a whole number from {size_spec.min} to {size_spec.max} "
                                               "(the template's image_size)")
    resize = pre.get("resize")
    if resize not in _RESIZES or (resize == "detector") != (kind == "detector"):
        allowed = "detector" if kind == "detector" else "short_side_crop or square"
        raise _refuse("preprocess.resize", f"must be {allowed} for a {kind}")
    for key, positive in (("mean", False), ("std", True)):
        values = pre.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
                and abs(v) <= 1e3 for v in values)):
            raise _refuse(f"preprocess.{key}", "must be three finite numbers" + (" above 0" if positive else ""))
    return {"image_size": size, "resize": resize, "mean": [float(v) for v in pre["mean"]],
            "std": [float(v) for v in pre["std"]]}


def _check_template(where: str, kind: object, template: object, params: object):
    """(Template, validated params) of a (kind, template, params) an archive names; UserError naming ``where``."""
    from core.templates import KINDS, get_template, validate

    if kind not in KINDS:
        raise _refuse(f"{where}kind", f"must be one of {', '.join(KINDS)}")
    if not isinstance(template, str):
        raise _refuse(f"{where}template", "must be the name of a template")
    try:
        spec = get_template(kind, template)
    except UserError as exc:
        raise _refuse(f"{where}template", f"is not in the catalog ({exc})") from None
    if not isinstance(params, dict):
        raise _refuse(f"{where}params", "must be an object of the template's parameters")
    try:
        return spec, validate(kind, template, params)
    except UserError as exc:
        raise _refuse(f"{where}params", f"are outside the template's bounds ({exc})") from None


def check_archive_config(config: object) -> dict:
    """Check an archive's config.json against the catalog before anything is built from it; return the config to
    store (parameters as validated, the base described by the archive itself, no server paths).

    Checked: kind and template exist in the catalog; params within the template's bounds
    (``core.templates.validate``); 1 to ``MAX_CONCEPTS`` unique concept names, and ``num_classes`` (when given) equal
    to their count; preprocessing within the template's image sizes; a base (transfer classifiers) that is the
    general embedder or a catalog classifier or embedder with checked parameters; ``embedding_dim`` is checked
    against the network later (:func:`_check_weights`). Raises UserError naming the field.
    """
    from core.models.networks import GENERAL_BASE

    if not isinstance(config, dict):
        raise UserError("archive: config.json must be a JSON object (kind, template, params, concepts, preprocess)")
    kind = config.get("kind")
    spec, params = _check_template("", kind, config.get("template"), config.get("params"))
    concepts = config.get("concepts")
    if not isinstance(concepts, list) or not 1 <= len(concepts) <= MAX_CONCEPTS:
        raise _refuse("concepts", f"must be a list of 1 to {MAX_CONCEPTS:,} concept names")
    for n, c in enumerate(concepts):
        if not isinstance(c, str) or not c.strip() or len(c) > MAX_CONCEPT_CHARS:
            raise _refuse(f"concepts[{n}]", f"must be a name of 1 to {MAX_CONCEPT_CHARS} characters")
    if len(set(concepts)) != len(concepts):
        raise _refuse("concepts", "name a concept twice; each concept is one output of the network")
    num_classes = config.get("num_classes")
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes != len(concepts)):
        raise _refuse("num_classes", f"must equal the number of concepts ({len(concepts)})")
    dim = config.get("embedding_dim")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65536):
        raise _refuse("embedding_dim", "must be a whole number (the network's embedding size)")
    out = dict(config, params=params, concepts=list(concepts),
               preprocess=_check_preprocess(config.get("preprocess"), spec.kind, spec.param("image_size")))
    out.pop(DESCRIPTION_KEY, None)  # it describes that export's files; a new export describes itself again
    base = config.get("base")
    if base is None and config.get("base_model"):
        ref = config["base_model"]
        if not (isinstance(ref, dict) and GENERAL in (ref.get("id"), ref.get("name"))):
            raise _refuse("base", "is missing: the model names a base model but does not describe it")
        base = dict(GENERAL_BASE)
    if base is not None:
        if kind != "classifier" or not spec.has("base_gradient_multiplier"):
            raise _refuse("base", f"is set, but {kind} template {spec.name} does not train on a base model")
        if not isinstance(base, dict):
            raise _refuse("base", "must be an object (kind, template, params, num_classes, preprocess)")
        if base.get("template") == GENERAL:
            base = dict(GENERAL_BASE)
        else:
            if base.get("kind") == "detector":
                raise _refuse("base.kind", "must be classifier or embedder (a detector has no image embedding)")
            base_kind, base_template = base.get("kind"), base.get("template")
            base_spec, base_params = _check_template("base.", base_kind, base_template, base.get("params"))
            count = base.get("num_classes")
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CONCEPTS:
                raise _refuse("base.num_classes", f"must be a whole number from 1 to {MAX_CONCEPTS:,}")
            pre = _check_preprocess(base.get("preprocess"), base_spec.kind, base_spec.param("image_size"))
            base = {"kind": base_kind, "template": base_template, "params": base_params, "num_classes": count,
                    "preprocess": pre}
        out["base"] = base
    if isinstance(config.get("base_model"), dict):  # the exporting server's folder means nothing here: never read
        out["base_model"] = {k: v for k, v in config["base_model"].items() if k in ("id", "name")}
    metrics = config.get("metrics")
    if metrics is not None and (not isinstance(metrics, dict) or len(metrics) > 200 or not all(
            isinstance(k, str) and len(k) <= MAX_NAME_CHARS and (v is None or isinstance(v, (int, float)))
            for k, v in metrics.items())):
        raise _refuse("metrics", "must be an object of at most 200 named numbers")
    export = config.get("export")
    if export is not None:
        if not isinstance(export, dict):
            raise _refuse("export", "must be an object")
        model_name = export.get("model_name")
        if model_name is not None and (not isinstance(model_name, str) or not model_name.strip()
                                       or len(model_name) > MAX_NAME_CHARS or not model_name.isprintable()):
            raise _refuse("export.model_name", f"must be a name of 1 to {MAX_NAME_CHARS} printable characters")
    return out


def _safetensors_shapes(name: str, data: bytes) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's header (nothing else of it is read)."""
    def bad() -> UserError:
        return UserError(f"archive: {name} is not a valid safetensors file; weights are only read with safetensors")

    if len(data) < 8:
        raise bad()
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise bad()
    try:
        header = json.loads(data[8:8 + size])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad() from None
    if not isinstance(header, dict):
        raise bad()
    shapes = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise bad()
        shapes[key] = tuple(shape)
    return shapes


def _check_weights(config: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """The weights' names and shapes are exactly the network's the (checked) config describes, and its embedding size
    is the config's: compared against the network built on PyTorch's meta device, which allocates no memory."""
    import torch

    from core.models.io import base_of
    from core.models.networks import build_network, build_on_base

    count = len(config["concepts"])
    net: torch.nn.Module
    with torch.device("meta"):
        base = base_of(config)
        if base is not None:
            net = build_on_base(base, config["template"], count)
        else:
            net = build_network(config["kind"], config["template"], dict(config["params"]), count, load_weights=False)
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if own != shapes:
        missing = sorted(set(own) - set(shapes))
        unexpected = sorted(set(shapes) - set(own))
        wrong = sorted(k for k in set(own) & set(shapes) if own[k] != shapes[k])
        raise UserError(f"archive: the weights do not belong to template {config['kind']}/{config['template']} with "
                        f"{count} concepts (missing {missing[:2]}, unexpected {unexpected[:2]}, wrong shape "
                        f"{wrong[:2]}); concepts, num_classes and the parameters in config.json must match "
                        "weights.safetensors")
    dim = config.get("embedding_dim")
    if dim is not None and dim != getattr(net, "embedding_dim", None):
        raise _refuse("embedding_dim", f"must be the network's embedding size ({getattr(net, 'embedding_dim', None)})")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes; UserError naming it when it cannot be read (corrupt, encrypted, unknown compression)."""
    import zlib

    try:
        return zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError, ValueError) as exc:
        raise UserError(f"archive: member {info.filename!r} cannot be read (corrupt, encrypted or an unsupported "
                        f"compression: {type(exc).__name__})") from None


def unpack_archive(data: bytes, dest: Path, expect: tuple[str, str] | None = None) -> dict:
    """Check an export zip and write its model folder into ``dest``; returns its (checked) config.

    Checked before anything is written or built: a readable zip within ``MAX_ARCHIVE_BYTES``; a config.json that
    :func:`check_archive_config` accepts (catalog template, parameters in bounds, sane concepts and preprocessing);
    the template ``expect`` when given; weights that are safetensors (or a plain tensor checkpoint, never a pickle
    carrying code) whose names and shapes are the described network's (:func:`_check_weights`). Only then are the
    files written and the network built and loaded (``load_model_dir``).
    """
    from core.models.io import load_model_dir

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
        raise UserError("archive: not a zip file; export a model from the Models page to get one") from exc
    with zf:
        if any(not i.filename for i in zf.infolist()):  # zipfile's own is_dir() fails on it
            raise UserError("archive: a member has an empty name; it is not a model exported by this studio")
        names = {Path(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
        if sum(i.file_size for i in zf.infolist()) > MAX_ARCHIVE_BYTES:
            raise UserError(f"archive: more than {MAX_ARCHIVE_BYTES // 2**30} GiB uncompressed; refused")
        if "config.json" not in names:
            raise UserError("archive: no config.json; it is not a model exported by this studio")
        if names["config.json"].file_size > MAX_CONFIG_BYTES:
            raise UserError(f"archive: config.json is over {MAX_CONFIG_BYTES // 2**20} MiB; refused")
        try:
            raw = json.loads(_read_member(zf, names["config.json"]))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise UserError(f"archive: config.json is not valid JSON ({exc})") from None
        config = check_archive_config(raw)
        kind, template = config["kind"], config["template"]
        if expect is not None and (kind, template) != tuple(expect):
            raise UserError(f"archive holds a {kind}/{template} model; it cannot be loaded into "
                            f"{expect[0]}/{expect[1]}. Choose the template it was exported from.")
        if "weights.safetensors" in names:
            weights = _read_member(zf, names["weights.safetensors"])
            _check_weights(config, _safetensors_shapes("weights.safetensors", weights))
        else:
            pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
            if not pickles:
                raise UserError("archive: no weights.safetensors; the model's weights are missing")
            from safetensors.torch import save

            state = _safe_state_from_pickle(pickles[0], _read_member(zf, names[pickles[0]]))
            _check_weights(config, {k: tuple(v.shape) for k, v in state.items()})  # before anything is copied
            try:
                weights = save({k: v.contiguous().clone() for k, v in state.items()})
            except (ValueError, RuntimeError, TypeError) as exc:
                raise UserError(f"{pickles[0]}: its tensors cannot be stored as safetensors ({exc})") from None
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest / "config.json", json.dumps(config, indent=2, sort_keys=True).encode(),
                       what=f"the imported model's configuration ({dest})")
    atomic_write_bytes(dest / "weights.safetensors", weights, what=f"the imported model's weights ({dest})")
    load_model_dir(dest, expect=(kind, template))  # the real network: weights load strictly, else UserError
    return config


def import_archive(user: User | str, data: bytes | str | Path, name: str | None = None,
                   expect: tuple[str, str] | None = None) -> int:
    """Register an exported zip as a model of ``user``'s (checked as :func:`unpack_archive` says); returns its id."""
    from core.store import models as store

    require_role(user, "member", "importing a model")
    owner = as_user(user).name
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    dest = paths.subdir("models") / f"imported-{uuid.uuid4().hex[:12]}"
    try:
        config = unpack_archive(data, dest, expect)
        base = name or (config.get("export") or {}).get("model_name") or f"imported-{config['template']}"
        return store.register_model(
            owner=owner, name=name or store.unique_name(owner, base), kind=config["kind"],
            template=config["template"], params=config["params"], concepts=config["concepts"],
            preprocess=config["preprocess"], path=dest, metrics=config.get("metrics") or {},
        )
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def load_archive(path: str | Path, expect: tuple[str, str] | None = None):
    """Load an export zip straight into a ``LoadedModel`` (a temporary folder, nothing registered)."""
    import tempfile

    from core.models.io import load_model_dir

    tmp = Path(tempfile.mkdtemp(prefix="deeptrain-import-"))
    try:
        unpack_archive(Path(path).read_bytes(), tmp, expect)
        return load_model_dir(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def formats_for(row: ModelRow) -> Sequence[str]:
    """The export formats this model supports."""
    return ("zip", "onnx") if row["kind"] == "detector" else FORMATS
