"""Evaluation speed: what the Models page pays for a figure, cached and uncached, against a plain forward pass.

Trains a Studio_EfficientNetLite0_Transfer classifier (frozen backbone, 1 epoch) on a Caltech-101 slice in a
temporary data directory, then times:
  - reference: the network alone over the held-out images (decode + preprocess + forward), no figures;
  - evaluate (fresh): the same plus every figure (sklearn), written to the cache beside the model;
  - evaluate (cached): reading the cache, as the page does on every rerun;
  - threshold change: the per-concept table at a new threshold from the cached probabilities;
  - report: the self-contained HTML; exports: zip, TorchScript, ONNX (each checked against the original).

    .venv/bin/python bench/bench_evaluation.py --classes 10 --per-class 30     # default
    .venv/bin/python bench/bench_evaluation.py --classes 3 --per-class 8 --image-size 64 --random   # quick proof
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _time(fn, repeat: int = 1) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--random", action="store_true", help="random weights (no ImageNet weights needed)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    os.environ["DEEPTRAIN_HOME"] = str(work / "home")
    try:
        from core.data.importer import import_dataset
        from core.evaluation import export, report, service
        from core.paths import caltech101_dir
        from core.training import train

        src_root = caltech101_dir() / "101_ObjectCategories"
        classes = sorted(p.name for p in src_root.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")
        src = work / "src"
        for cls in classes[: args.classes]:
            (src / cls).mkdir(parents=True)
            for f in sorted((src_root / cls).iterdir())[: args.per_class]:
                shutil.copy(f, src / cls / f.name)
        import_dataset("local", str(src), "bench")
        params = {"image_size": args.image_size, "num_epochs": 1, "batch_size": 16,
                  "pretrained_weights": "None" if args.random else "ImageNet-1k"}
        t_train, _ = _time(lambda: train({"owner": "local", "dataset": "bench", "kind": "classifier",
                                          "template": "Studio_EfficientNetLite0_Transfer", "params": params,
                                          "name": "m", "seed": 0}, work / "run"))
        row = service.get("local", "m")
        loaded = service.load_model(row)
        from core.store import datasets as ds

        paths = [r["path"] for r in ds.dataset_records(row["dataset_id"], ds.eval_split(row["dataset_id"]))]
        t_ref, _ = _time(lambda: loaded.predict(service.open_images(paths)))
        t_fresh, result = _time(lambda: service.evaluate("local", "m", refresh=True))
        t_cached, _ = _time(lambda: service.evaluate("local", "m"), repeat=5)
        t_thresh, _ = _time(lambda: service.per_concept_at(row, 0.3), repeat=5)
        t_report, html = _time(lambda: report.build_report("local", "m"))
        rows = [("reference: forward only", t_ref, f"{len(paths)} images"),
                ("evaluate (fresh)", t_fresh, f"ratio to reference {t_fresh / t_ref:.2f}"),
                ("evaluate (cached)", t_cached, f"{t_fresh / t_cached:.0f}x faster than fresh"),
                ("threshold change", t_thresh, f"{t_fresh / t_thresh:.0f}x faster than fresh"),
                ("HTML report", t_report, f"{len(html) / 2**20:.1f} MB")]
        for fmt in export.FORMATS:
            t, info = _time(lambda fmt=fmt: export.export_model("local", "m", fmt, work / f"m.{fmt}"))
            rows.append((f"export {fmt}", t, f"max diff {info['max_diff']:.1e}, "
                                             f"{Path(info['path']).stat().st_size / 2**20:.1f} MB"))
        print(f"\n{args.classes} classes x {args.per_class} images, {args.image_size} px, "
              f"{result['items']} held-out images, training {t_train:.1f} s, accuracy {result['accuracy']:.3f}\n")
        print("| step | seconds | note |\n|---|---|---|")
        for name, t, note in rows:
            print(f"| {name} | {t:.3f} | {note} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
