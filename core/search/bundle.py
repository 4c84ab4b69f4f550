"""A portable search bundle: an index as a zip that a laptop searches with onnxruntime, FAISS, PIL and NumPy only.

``bundle.zip`` holds:

- ``embedder.onnx``: the index's model as ONNX, a normalised (B, 3, S, S) batch in, L2-normalised embeddings out; it
  describes itself (``core.evaluation.export.describe``: input size, colour order, resize rule, mean, std, output).
- ``index.faiss``: the items' embeddings as a plain FAISS index (``faiss.read_index``) that ranks them by inner
  product as the studio's index does (exact Flat; an IVF index keeps its trained lists and nprobe). FAISS id ``i`` is
  row ``i`` of ``items.csv``.
- ``items.csv``: ``item_id, labels, original_file`` in index order (labels joined with ``;``; cells a spreadsheet
  would run are neutralised, as in every CSV the studio writes: ``core.csvsafe``).
- ``bundle.json``: what the bundle is (index, dataset, model, count, dimension, search structure, studio version).
- ``search_example.py``: searches the bundle for photos like the given ones.

Items deleted from the dataset since the index's last sync are left out, as the studio's own search leaves them out.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from core import csvsafe, paths
from core.errors import UserError
from core.fsutil import atomic_path, open_write
from core.search import embed as embedding
from core.search import service
from core.store import datasets as ds_store
from core.users import NotFound, User

BUNDLE_VERSION = 1
MEMBERS = ("embedder.onnx", "index.faiss", "items.csv", "bundle.json", "search_example.py")
_IO_CHUNK = 1 << 24  # bytes per write when FAISS streams the index into the zip


def export_bundle(user: User | str, index: str | int, out: str | Path) -> dict:
    """Write the index ``user`` sees (own or the team's; NotFound otherwise, as for a missing one) as a search bundle
    zip at ``out`` (see the module doc), atomically.

    The bundle holds the model's weights (as ONNX): an index built with a stored model needs that model to be
    visible to ``user`` too. Returns {"index", "path", "items", "dim", "model", "backend", "bytes", "members"}.
    """
    from core.evaluation import export

    opened = service.open_index(user, index)
    row = opened.row
    if opened.model != embedding.GENERAL:
        from core.store import models as model_store

        try:
            model_store.get_model(user, int(opened.model.split(":", 1)[1]))
        except NotFound:
            raise UserError(f"index {row['name']!r} was built with a model that is not shared with you; a bundle "
                            "holds the model itself, so its owner must share it first") from None
    records = {r["item_id"]: r for r in ds_store.dataset_records(row["dataset_id"])}
    keep = np.array([int(i) in records for i in opened.ids], dtype=bool)
    ids, vectors = opened.ids[keep], opened.vectors[keep]
    if len(ids) == 0:
        raise UserError(f"index {row['name']!r} holds no images of its dataset; sync or rebuild it first")
    model = _cpu_embedder(opened.model)
    model_row = embedding.model_row(opened.model)
    name = model_row["name"] if model_row else embedding.GENERAL
    description = export.describe(model, name=name, output="embedding")
    if description["embedding_dim"] != vectors.shape[1]:
        raise UserError(f"index {row['name']!r} holds {vectors.shape[1]}-d embeddings but its model now gives "
                        f"{description['embedding_dim']}-d ones; build a new index")
    plain = opened.index.plain_faiss(vectors)
    facts = {"bundle_version": BUNDLE_VERSION, "studio": "Deep Training Studio",
             "studio_version": description["studio_version"], "index": row["name"],
             "dataset": _dataset_name(row["dataset_id"]), "dataset_version": row["dataset_version"],
             "model": embedding.model_label(opened.model), "items": len(ids), "dim": int(vectors.shape[1]),
             "metric": "inner product of L2-normalised embeddings (cosine similarity)",
             "search": {"backend": opened.index.backend, "exact": opened.index.exact, **opened.index.params()},
             "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "files": {"embedder.onnx": "photo -> embedding; its metadata describes the input and output",
                       "index.faiss": "FAISS index; id i is row i of items.csv",
                       "items.csv": "item_id, labels (;-joined), original_file, in index order",
                       "search_example.py": "python search_example.py PHOTO... [--k 10] [--json]"}}
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="bundle-", dir=paths.subdir("cache")) as work:
        onnx_path = Path(work) / "embedder.onnx"
        export.export_network(model, "onnx", onnx_path, description)
        with atomic_path(out, what=f"the search bundle of index {row['name']!r} ({out})") as tmp, \
                open_write(tmp) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(onnx_path, "embedder.onnx", compress_type=zipfile.ZIP_STORED)
            _write_faiss(zf, plain)
            zf.writestr("items.csv", _items_csv(ids, records))
            zf.writestr("bundle.json", json.dumps(facts, indent=2))
            zf.writestr("search_example.py", example_script())
    return {"index": row["name"], "path": str(out), "items": len(ids), "dim": int(vectors.shape[1]),
            "model": facts["model"], "backend": opened.index.backend, "bytes": out.stat().st_size,
            "members": list(MEMBERS)}


def _cpu_embedder(key: str):
    """The model behind ``key`` on the CPU, where the export traces (a shared GPU copy is loaded again, not moved)."""
    model = embedding.load_embedder(key)
    if model.device.type == "cpu":
        return model
    row = embedding.model_row(key)
    if row is None:  # the general embedder
        from core.models.general import general_config
        from core.models.io import LoadedModel
        from core.models.networks import build_lite0_imagenet

        return LoadedModel(general_config(), build_lite0_imagenet(), can_predict=False)
    from core.models.io import load_model_dir

    return load_model_dir(row["path"])


def _dataset_name(dataset_id: int) -> str | None:
    try:
        return ds_store.get_dataset_by_id(dataset_id)["name"]
    except UserError:
        return None


def _write_faiss(zf: zipfile.ZipFile, index) -> None:
    """Stream the FAISS index into the zip as ``index.faiss`` (no second copy in memory)."""
    import faiss

    with zf.open(zipfile.ZipInfo("index.faiss", date_time=time.gmtime()[:6]), "w", force_zip64=True) as member:
        # FAISS's bundled stubs omit the callback IO classes that its Python wrapper defines.
        writer = faiss.PyCallbackIOWriter(member.write, _IO_CHUNK)  # type: ignore[attr-defined]
        faiss.write_index(index, writer)
        del writer


def _items_csv(ids: np.ndarray, records: dict[int, dict]) -> str:
    buf = io.StringIO()
    writer = csvsafe.writer(buf, lineterminator="\n")  # labels a spreadsheet would run are neutralised
    writer.writerow(["item_id", "labels", "original_file"])
    for item in ids.tolist():
        rec = records[item]
        writer.writerow([item, ";".join(rec["labels"]), rec["source_path"] or ""])
    return buf.getvalue()


def example_script() -> str:
    """``search_example.py``: onnxruntime, FAISS, PIL and NumPy only; the preprocessing is the one every export's
    example shares (``core.evaluation.export.CLIENT_PREPROCESS``), read from the embedder's own description."""
    from core.evaluation.export import CLIENT_PREPROCESS

    return _EXAMPLE.replace("{CLIENT_PREPROCESS}", CLIENT_PREPROCESS)


_EXAMPLE = r'''"""Search this bundle with onnxruntime, FAISS, PIL and NumPy only, from the folder it was unzipped into:

    python search_example.py PHOTO... [--k 10] [--json]

embedder.onnx turns a photo into an L2-normalised embedding and describes itself (its metadata: input size, resize
rule, mean and std); index.faiss ranks the items' embeddings by inner product (cosine similarity); FAISS id i is row
i of items.csv (item id, labels, original file).
"""
import argparse
import csv
import json
import re
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent


{CLIENT_PREPROCESS}

def cell(text):
    """A CSV cell as it was: the studio puts a quote before text a spreadsheet would run as a formula."""
    return text[1:] if re.match(r"'+[=+\-@\t\r]", text) else text


def main():
    parser = argparse.ArgumentParser(description="find the items most like each photo")
    parser.add_argument("photos", nargs="+")
    parser.add_argument("--k", type=int, default=10, help="results per photo (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    session = ort.InferenceSession(str(HERE / "embedder.onnx"), providers=["CPUExecutionProvider"])
    d = json.loads(session.get_modelmeta().custom_metadata_map["description"])
    index = faiss.read_index(str(HERE / "index.faiss"))
    with open(HERE / "items.csv", newline="", encoding="utf-8") as fh:
        items = list(csv.DictReader(fh))
    found = []
    for photo in args.photos:
        query = session.run(None, {"image": preprocess(photo, d)})[0]
        scores, rows = index.search(query, min(args.k, index.ntotal))
        found.append({"photo": photo, "results": [
            {"item": int(items[r]["item_id"]), "labels": [x for x in cell(items[r]["labels"]).split(";") if x],
             "file": cell(items[r]["original_file"]), "score": round(float(s), 6)}
            for s, r in zip(scores[0], rows[0]) if r >= 0]})
    if args.json:
        print(json.dumps(found, indent=2))
        return
    for f in found:
        print(f["photo"])
        for r in f["results"]:
            print(f"  {r['score']:.4f}  item {r['item']:<8} {', '.join(r['labels']):<24} {r['file']}")


if __name__ == "__main__":
    main()
'''
