"""Export a stored model (zip, TorchScript, ONNX) and import an exported zip back, checking it on the way in.

The zip holds ``weights.safetensors``, ``config.json`` (template, parameters, concepts, preprocessing),
``concepts.txt``, ``preprocess.json`` and ``predict_example.py``. TorchScript and ONNX files hold one network that
takes a normalised (B, 3, H, W) batch and returns probabilities (classifiers) or L2-normalised embeddings
(embedders); each export is run once against the original and refused if they differ by more than ``TOLERANCE``.
Detectors export as a zip or as ONNX (one (3, H, W) image in [0, 1] of any size in; boxes, labels, scores out; the
concepts in the file's metadata), checked for the same detections on one of their dataset's images.
Weights are only ever read with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Sequence

from core import paths
from core.errors import UserError
from core.evaluation import service
from core.users import User, as_user

FORMATS = ("zip", "torchscript", "onnx")
TOLERANCE = 1e-4  # largest difference allowed between the exported and the original network's outputs
ARCHIVE_MEMBERS = ("weights.safetensors", "config.json", "concepts.txt", "preprocess.json", "predict_example.py")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
MAX_ARCHIVE_BYTES = 4 * 2**30  # 4 GiB uncompressed: larger than any template's weights, small enough to refuse bombs


def _output_mode(row: dict) -> str:
    return "embedding" if row["kind"] == "embedder" else "probabilities"


def exported_module(loaded, mode: str):
    """An ``nn.Module`` from a normalised batch to probabilities or L2-normalised embeddings."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    net = loaded.net
    cosine = getattr(net, "output", "logits") == "cosine"
    scale = float(getattr(net, "logit_scale", 1.0))
    sigmoid = service.multi_label({"params": loaded.params})
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


def export_model(user: User | str, model: str | int, fmt: str = "zip", out: str | Path = "") -> dict:
    """Write the model to ``out`` as ``fmt`` (zip | torchscript | onnx). Returns {"path", "format", "max_diff"}."""
    if fmt not in FORMATS:
        raise UserError(f"export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    row = service.get(user, model)
    out = Path(out or f"{row['name']}.{ {'zip': 'zip', 'torchscript': 'pt', 'onnx': 'onnx'}[fmt] }")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "zip":
        out.write_bytes(archive_bytes(row))
        return {"path": str(out), "format": fmt, "max_diff": 0.0}
    if row["kind"] == "detector":
        if fmt != "onnx":
            raise UserError(f"model {row['name']!r}: {fmt} export covers classifiers and embedders; detectors export "
                            "as a zip or ONNX (their custom box heads do not script)")
        return _export_detector_onnx(row, out)
    loaded = service.load_model(row)
    module = exported_module(loaded, _output_mode(row))
    x = _example_batch(loaded)
    import torch

    with torch.inference_mode():
        expected = module(x).numpy()
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        if fmt == "torchscript":
            diff = _to_torchscript(module, x, expected, tmp)
        else:
            diff = _to_onnx(module, x, expected, tmp)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "format": fmt, "max_diff": diff}


def _to_torchscript(module, x, expected, path: Path) -> float:
    import warnings

    import torch

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.", category=FutureWarning)  # still the portable format
    try:
        with torch.no_grad():
            traced = torch.jit.trace(module, x, check_trace=False)
        traced.save(str(path))
    except Exception as exc:
        raise UserError(f"TorchScript export is not possible for this network ({type(exc).__name__}: {exc})") from exc
    reloaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return _check_close("TorchScript", expected, reloaded(x).numpy())


def _to_onnx(module, x, expected, path: Path) -> float:
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


def _detector_example(row: dict, loaded):
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


def _export_detector_onnx(row: dict, out: Path) -> dict:
    """ONNX of a detector: input ``image`` (3, H, W) RGB in [0, 1], any size (the graph normalises and resizes as
    the network does); outputs ``boxes`` (N, 4) x1, y1, x2, y2 in input pixels, ``labels`` (N,) = concept index + 1
    (the concepts in the file's metadata, ``concepts``), ``scores`` (N,). Checked on one image against the original:
    the same detections, corners within BOX_TOLERANCE_PX."""
    import warnings

    import onnx
    import torch

    loaded = service.load_model(row)
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
        model = onnx.load(str(tmp))
        for key, value in (("concepts", json.dumps(list(row["concepts"]))), ("kind", "detector"),
                           ("template", row["template"]), ("labels", "concept index + 1")):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))
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


def _detector_onnx_snippet(row: dict) -> str:
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
        "                 for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores) if score >= THRESHOLD])\n"
    )


# ------------------------------------------------------------------------------------------------ zip


def archive_bytes(row: dict) -> bytes:
    """The model as an export zip, in memory (weights, config, concepts, preprocessing, example)."""
    folder = Path(row["path"])
    weights = service.weights_file(row)
    from core.models.io import read_config

    config = read_config(folder)
    config["export"] = {"app": "Deep Training Studio", "model_name": row["name"], "model_id": row["id"],
                        "dataset_id": row.get("dataset_id"), "dataset_version": row.get("dataset_version"),
                        "output": _output_mode(row)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(weights, "weights.safetensors")
        zf.writestr("config.json", json.dumps(config, indent=2, sort_keys=True, default=str))
        zf.writestr("concepts.txt", "\n".join(config["concepts"]) + "\n")
        zf.writestr("preprocess.json", json.dumps(config["preprocess"], indent=2))
        zf.writestr("predict_example.py", snippet(row, "zip"))
    return buf.getvalue()


def snippet(row: dict, fmt: str) -> str:
    """A short Python program that loads the exported model and predicts on image files given as arguments."""
    from core.models.io import read_config

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
    config = read_config(row["path"])
    pre = config["preprocess"]
    load = ("import onnxruntime as ort\nsession = ort.InferenceSession(sys.argv[1])\n"
            "run = lambda x: session.run(None, {'image': x})[0]\n") if fmt == "onnx" else (
        "import torch\nnet = torch.jit.load(sys.argv[1], map_location='cpu')\n"
        "run = lambda x: net(torch.from_numpy(x)).detach().numpy()\n")
    size = int(pre["image_size"])
    return (
        f'"""Predict with the exported {fmt} model: python predict.py MODEL IMAGE..."""\n'
        "import sys\n\nimport numpy as np\nfrom PIL import Image\n\n"
        f"SIZE, RESIZE = {size}, {pre['resize']!r}\n"
        f"MEAN, STD = np.array({list(pre['mean'])}, np.float32), np.array({list(pre['std'])}, np.float32)\n"
        f"CONCEPTS = {list(config['concepts'])!r}\n"
        f"OUTPUT = {_output_mode(row)!r}  # probabilities per concept, or an L2-normalised embedding\n\n\n"
        "def preprocess(path):\n"
        "    im = Image.open(path).convert('RGB')\n"
        "    if RESIZE == 'square':\n"
        "        im = im.resize((SIZE, SIZE), Image.BICUBIC)\n"
        "    else:  # short side to SIZE, then a centre crop\n"
        "        w, h = im.size\n"
        "        s = SIZE / min(w, h)\n"
        "        im = im.resize((max(SIZE, round(w * s)), max(SIZE, round(h * s))), Image.BICUBIC)\n"
        "        left, top = (im.width - SIZE) // 2, (im.height - SIZE) // 2\n"
        "        im = im.crop((left, top, left + SIZE, top + SIZE))\n"
        "    x = (np.asarray(im, np.float32) / 255.0 - MEAN) / STD\n"
        "    return x.transpose(2, 0, 1)[None].astype(np.float32)\n\n\n"
        f"{load}"
        "for path in sys.argv[2:]:\n"
        "    out = run(preprocess(path))[0]\n"
        "    if OUTPUT == 'embedding':\n"
        "        print(path, 'embedding', out.shape, out[:4])\n"
        "    else:\n"
        "        print(path, [(CONCEPTS[i], round(float(out[i]), 4)) for i in np.argsort(-out)[:5]])\n"
    )


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


def unpack_archive(data: bytes, dest: Path, expect: tuple[str, str] | None = None) -> dict:
    """Check an export zip and write its model folder into ``dest``; returns its config.

    Refuses: not a zip, no config.json, a model of another template than ``expect``, weights that are missing, a
    pickle carrying code, or weights that do not fit the template's network.
    """
    from core.models.io import load_model_dir

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise UserError("archive: not a zip file; export a model from the Models page to get one") from exc
    with zf:
        names = {Path(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
        if sum(i.file_size for i in zf.infolist()) > MAX_ARCHIVE_BYTES:
            raise UserError(f"archive: more than {MAX_ARCHIVE_BYTES // 2**30} GiB uncompressed; refused")
        if "config.json" not in names:
            raise UserError("archive: no config.json; it is not a model exported by this studio")
        try:
            config = json.loads(zf.read(names["config.json"]))
        except ValueError as exc:
            raise UserError(f"archive: config.json is not valid JSON ({exc})") from exc
        kind, template = config.get("kind"), config.get("template")
        if expect is not None and (kind, template) != tuple(expect):
            raise UserError(f"archive holds a {kind}/{template} model; it cannot be loaded into "
                            f"{expect[0]}/{expect[1]}. Choose the template it was exported from.")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "config.json").write_bytes(zf.read(names["config.json"]))
        if "weights.safetensors" in names:
            (dest / "weights.safetensors").write_bytes(zf.read(names["weights.safetensors"]))
        else:
            pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
            if not pickles:
                raise UserError("archive: no weights.safetensors; the model's weights are missing")
            from safetensors.torch import save_file

            state = _safe_state_from_pickle(pickles[0], zf.read(names[pickles[0]]))
            save_file({k: v.contiguous() for k, v in state.items()}, str(dest / "weights.safetensors"))
    load_model_dir(dest, expect=(kind, template))  # weights fit the template's network, else UserError
    return config


def import_archive(user: User | str, data: bytes | str | Path, name: str | None = None,
                   expect: tuple[str, str] | None = None) -> int:
    """Register an exported zip as a model of ``user``'s (checked as :func:`unpack_archive` says); returns its id."""
    from core.store import models as store

    owner = as_user(user).name
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    dest = paths.subdir("models") / f"imported-{uuid.uuid4().hex[:12]}"
    try:
        config = unpack_archive(data, dest, expect)
        base = name or config.get("export", {}).get("model_name") or f"imported-{config['template']}"
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


def formats_for(row: dict) -> Sequence[str]:
    """The export formats this model supports."""
    return ("zip", "onnx") if row["kind"] == "detector" else FORMATS
