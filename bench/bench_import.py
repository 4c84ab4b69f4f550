"""Import speed: all of Caltech-101 through the real importer vs a plain reference, plus thumbnail-page rendering.

Reference: a pool of one process per core that only reads, hashes, fully decodes, orients and thumbnails each image
and copies it to a content-addressed path (no database, no report, no checks). The real import does everything:
source checks, decode in worker processes, duplicates, split, health report, one transaction. Each phase runs in
its own subprocess so its peak memory is its own. Also imports half the classes, to show memory flat in size.

    .venv/bin/python bench/bench_import.py                 # all 9,145 images
    .venv/bin/python bench/bench_import.py --classes 5     # a quick proof run
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _ref_one(task: tuple[str, str]) -> int:
    """Read, hash, decode, orient, thumbnail, copy to a content-addressed path: the least an import must do."""
    from PIL import Image, ImageOps

    src, dest = task
    data = Path(src).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    img = Image.open(io.BytesIO(data))
    img.load()
    img = ImageOps.exif_transpose(img).convert("RGB")
    thumb = img.copy()
    thumb.thumbnail((128, 128))
    out = Path(dest) / "blobs" / digest[:2]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{digest}.jpg").write_bytes(data)
    tdir = Path(dest) / "thumbs" / digest[:2]
    tdir.mkdir(parents=True, exist_ok=True)
    thumb.save(tdir / f"{digest}.jpg", "JPEG", quality=85)
    return len(data)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _peak_mb() -> float:
    """Peak resident memory of this process and of its largest child, MiB."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(me, kids) / 1024


def phase_reference(source: Path, work: Path) -> dict:
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix != ".txt")
    t0 = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_ref_one, [(str(f), str(work)) for f in files], chunksize=16):
            pass
    seconds = time.perf_counter() - t0
    return {"images": len(files), "seconds": seconds, "peak_mb": _peak_mb(), "store_bytes": _du(work)}


def phase_import(source: Path, work: Path) -> dict:
    os.environ["DEEPTRAIN_HOME"] = str(work)
    from core.data.importer import import_dataset

    t0 = time.perf_counter()
    report = import_dataset("local", source, "caltech101")
    seconds = time.perf_counter() - t0
    return {"images": report["items"], "seconds": seconds, "peak_mb": _peak_mb(), "store_bytes": _du(work),
            "skipped": len(report["skipped"])}


def phase_page(work: Path) -> dict:
    """Render the Datasets page's grid of 100 thumbnails (AppTest, whole page run) and the bare data behind it."""
    os.environ["DEEPTRAIN_HOME"] = str(work)
    from streamlit.testing.v1 import AppTest

    from core.store import datasets as store

    ds = store.list_datasets("local")[0]
    t0 = time.perf_counter()
    items = store.find_items(ds["id"], offset=100, limit=100)
    nbytes = sum(len(Path(i["thumb"]).read_bytes()) for i in items)
    bare = time.perf_counter() - t0
    runs = []
    at = AppTest.from_file(str(ROOT / "pages" / "1_Datasets.py"), default_timeout=60)
    at.run()  # the first run pays AppTest's own start-up (scanning installed packages), not the page's
    for _ in range(3):
        t0 = time.perf_counter()
        at.run()
        runs.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
        assert len(at.get("image")) >= 100
    return {"bare_query_and_read_s": bare, "thumb_kib": nbytes / 1024, "page_run_s": statistics.median(runs)}


def _child(phase: str, source: Path, work: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", phase, "--source", str(source), "--work", str(work)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"phase {phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "datasets" / "caltech101")
    parser.add_argument("--classes", type=int, default=0, help="use only the first N classes (0: all)")
    parser.add_argument("--phase", choices=["reference", "import", "page"])
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.phase:
        fn = {"reference": lambda: phase_reference(args.source, args.work),
              "import": lambda: phase_import(args.source, args.work), "page": lambda: phase_page(args.work)}
        print(json.dumps(fn[args.phase]()))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_import_"))
    try:
        cats = args.source / "101_ObjectCategories"
        classes = sorted(p.name for p in cats.iterdir() if p.is_dir())
        half_src = tmp / "half"
        for c in classes[: len(classes) // 2]:
            shutil.copytree(cats / c, half_src / c)
        if args.classes:
            full_src = tmp / "subset"
            for c in classes[: args.classes]:
                shutil.copytree(cats / c, full_src / c)
            half_src = tmp / "subset_half"
            for c in classes[: max(1, args.classes // 2)]:
                shutil.copytree(cats / c, half_src / c)
        else:
            full_src = args.source
        image_root = full_src / "101_ObjectCategories" if (full_src / "101_ObjectCategories").is_dir() else full_src
        ref = _child("reference", image_root, tmp / "ref")
        imp = _child("import", full_src, tmp / "home")
        half = _child("import", half_src, tmp / "home_half")
        page = _child("page", full_src, tmp / "home")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'run':<34}{'images':>8}{'seconds':>9}{'images/s':>10}{'peak MiB':>10}{'store MiB':>11}")
    for label, r in (("reference (read/hash/decode/copy)", ref), ("import (everything)", imp),
                     ("import, half the classes", half)):
        print(f"{label:<34}{r['images']:>8}{r['seconds']:>9.2f}{r['images'] / r['seconds']:>10.0f}"
              f"{r['peak_mb']:>10.0f}{r['store_bytes'] / 2**20:>11.1f}")
    print(f"import / reference time: {imp['seconds'] / ref['seconds']:.2f}x (goal <= 1.5x); "
          f"peak memory half -> full: {half['peak_mb']:.0f} -> {imp['peak_mb']:.0f} MiB")
    print(f"page of 100 thumbnails: query + read {page['bare_query_and_read_s'] * 1000:.0f} ms "
          f"({page['thumb_kib']:.0f} KiB); whole Datasets page rerun (AppTest, median of 3) {page['page_run_s']:.2f} s "
          "(goal < 1 s)")


if __name__ == "__main__":
    main()
