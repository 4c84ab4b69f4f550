"""Export a dataset as a zip: folder per concept, CSV manifest, or COCO; each imports back as it was."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

from core import csvsafe
from core.errors import UserError
from core.fsutil import atomic_path, open_write
from core.store import datasets as store
from core.users import User

EXPORT_FORMATS = ("folder", "csv", "coco")


def _safe(name: str) -> str:
    """A concept name usable as one folder name inside a zip."""
    return re.sub(r"[\\/:\x00]", "_", name).strip() or "_"


def _member_name(rec: dict) -> str:
    base = Path(rec["source_path"] or "").name or "image"
    stem = re.sub(r"[^\w.-]+", "_", Path(base).stem)[:60] or "image"
    return f"{rec['item_id']}_{stem}{Path(rec['path']).suffix}"


def export_dataset(user: User | str, dataset: str | int, fmt: str, out: str | os.PathLike) -> Path:
    """Write ``dataset`` (one ``user`` sees: own or the team's) to the zip ``out`` and return its path.

    folder: ``<split>/<concept>/<file>`` (an image with several labels appears under each of its concepts; one
    with none under ``_unlabeled``); csv: ``manifest.csv`` (path,labels,split; cells that a spreadsheet would run
    as a formula get a leading quote, which the importer removes: ``core.csvsafe``) and ``images/``; coco:
    ``annotations.json`` (images, categories, boxes; a labelled image without boxes keeps its labels in a
    ``labels`` key) and ``images/``. Images are stored uncompressed in the zip (they are compressed already).
    """
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"Unknown export format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")
    ds = store.get_dataset(user, dataset)
    recs = store.dataset_records(ds["id"])
    out = Path(out)
    with atomic_path(out, what=f"the export of dataset {ds['name']!r} ({out})") as tmp, open_write(tmp) as fh, \
            zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
        if fmt == "folder":
            for rec in recs:
                for concept in rec["labels"] or ["_unlabeled"]:
                    zf.write(rec["path"], f"{rec['split']}/{_safe(concept)}/{_member_name(rec)}")
        elif fmt == "csv":
            buf = io.StringIO()
            writer = csvsafe.writer(buf, lineterminator="\n")  # labels a spreadsheet would run are neutralised
            writer.writerow(["path", "labels", "split"])
            for rec in recs:
                member = f"images/{_member_name(rec)}"
                zf.write(rec["path"], member)
                writer.writerow([member, ";".join(rec["labels"]), rec["split"]])
            zf.writestr("manifest.csv", buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
        else:
            names = store.dataset_concepts(ds["id"])
            cat_id = {n: i + 1 for i, n in enumerate(names)}
            images: list[dict[str, Any]] = []
            anns: list[dict[str, Any]] = []
            for rec in recs:
                member = _member_name(rec)
                zf.write(rec["path"], f"images/{member}")
                images.append({"id": rec["item_id"], "file_name": member, "width": rec["width"],
                               "height": rec["height"], "split": rec["split"], "labels": rec["labels"]})
                for b in rec["boxes"]:
                    anns.append({"id": len(anns) + 1, "image_id": rec["item_id"], "category_id": cat_id[b["concept"]],
                                 "bbox": [b["x"], b["y"], b["w"], b["h"]], "area": b["w"] * b["h"], "iscrowd": 0})
            coco = {"info": {"description": f"{ds['name']} version {ds['version']}"}, "images": images,
                    "annotations": anns,
                    "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}
            zf.writestr("annotations.json", json.dumps(coco),
                        compress_type=zipfile.ZIP_DEFLATED)
    return out
