"""Label mistakes found: Caltech-101 with a seeded 5% of its training labels flipped, the studio's quality check
against the plain reference, and the time from import to the ranked list.

The studio: ``core.data.quality`` as the quality job runs it (the general embedder, cached; standardised embeddings,
k-fold logistic regression, cleanlab's ``find_label_issues`` ranked by self-confidence), over the whole dataset. The
plain reference, in the same run on the same embeddings: scikit-learn's ``LogisticRegression()`` with its defaults on
the raw embeddings, 5-fold ``cross_val_predict``, the same cleanlab call. Figure: the share of flipped images among
the top N label suspects, N = the number flipped (goal >= 0.8), and how many of them get their true label suggested.

    .venv/bin/python bench/bench_quality.py               # all of Caltech-101 (9,145 images, 305 flips)
    .venv/bin/python bench/bench_quality.py --classes 10  # a quick run on the first 10 concepts
    .venv/bin/python bench/bench_quality.py --map 100000  # the map's page-side costs at 100,000 points only
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def subset(source: Path, classes: int, dest: Path) -> Path:
    """The first ``classes`` concepts of Caltech-101 with their train/test lists, copied to ``dest``."""
    cats = sorted(p.name for p in (source / "101_ObjectCategories").iterdir() if p.is_dir())[:classes]
    for c in cats:
        shutil.copytree(source / "101_ObjectCategories" / c, dest / "101_ObjectCategories" / c)
    for name in ("train.txt", "test.txt"):
        lines = [ln for ln in (source / name).read_text().splitlines() if ln.split("/", 1)[0] in cats]
        (dest / name).write_text("\n".join(lines) + "\n")
    return dest


def flip(fraction: float, seed: int) -> dict[int, str]:
    """Relabel a seeded ``fraction`` of the training images to another concept (one new version); returns
    {item_id: true concept}."""
    from core.data import service as datasets

    train = datasets.dataset_records("local", "caltech101", "train")
    concepts = sorted({r["labels"][0] for r in train})
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(train), round(fraction * len(train)), replace=False)
    truth, new = {}, {}
    for i in sorted(picked.tolist()):
        rec = train[i]
        others = [c for c in concepts if c != rec["labels"][0]]
        truth[rec["item_id"]] = rec["labels"][0]
        new[rec["item_id"]] = [others[int(rng.integers(len(others)))]]
    datasets.relabel_items("local", "caltech101", new)
    return truth


def lite0_accuracy(label: str) -> tuple[float, float]:
    """Studio_EfficientNetLite0_Transfer with its defaults on the dataset as it is now (train() to the stored model,
    timed): its accuracy on the test list (the evaluation split) and the seconds."""
    from core.evaluation import service as models
    from core.training import ConsoleCallbacks, train

    t0 = time.perf_counter()
    result = train({"owner": "local", "dataset": "caltech101", "kind": "classifier", "seed": 0, "params": {},
                    "template": "Studio_EfficientNetLite0_Transfer", "name": f"lite0-{label}"},
                   Path(os.environ["DEEPTRAIN_HOME"]) / "runs" / label, ConsoleCallbacks(quiet=True))
    seconds = time.perf_counter() - t0
    return float(models.evaluate("local", result.model_id)["accuracy"]), seconds


def reference(ids: np.ndarray, vectors: np.ndarray, labels: list[list[str]], seed: int) -> tuple[list[int], dict]:
    """Plain scikit-learn + cleanlab: LogisticRegression() on the raw embeddings, 5-fold, find_label_issues."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    names = sorted({ls[0] for ls in labels})
    y = np.array([names.index(ls[0]) for ls in labels])
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    probs = cross_val_predict(LogisticRegression(max_iter=1000), vectors, y, cv=cv, method="predict_proba")
    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    return [int(ids[r]) for r in ranked], {int(ids[r]): names[int(np.argmax(probs[r]))] for r in ranked}


def map_costs(n: int) -> None:
    """What the Map tab does per rerun at ``n`` points, on a synthetic 2-D layout: draw a sample, build the WebGL
    scatter (and its JSON, what the browser receives), and select among all points with a box and a 64-point lasso."""
    import pandas as pd
    import plotly.express as px

    from core.data import atlas

    rng = np.random.default_rng(0)
    xy = rng.normal(size=(n, 2)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    concept = rng.integers(0, 100, n).astype(str).astype(object)
    t = {}
    t0 = time.perf_counter()
    drawn = atlas.drawn_sample(n)
    frame = pd.DataFrame({"x": xy[drawn, 0], "y": xy[drawn, 1], "item": ids[drawn], "concept": concept[drawn]})
    fig = px.scatter(frame, x="x", y="y", color="concept", hover_data=["item"], render_mode="webgl")
    t["figure"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    payload = fig.to_json()
    t["json"] = time.perf_counter() - t0
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    lasso = [[float(np.cos(a)), float(np.sin(a))] for a in angles]
    t0 = time.perf_counter()
    box = atlas.select_region(xy, {"boxes": [[-0.5, 0.5, -0.5, 0.5]], "lassos": []})
    t["box"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    inside = atlas.select_region(xy, {"boxes": [], "lassos": [lasso]})
    t["lasso"] = time.perf_counter() - t0
    print(f"| {n:,} | {len(drawn):,} | {t['figure'] * 1000:.0f} | {t['json'] * 1000:.0f} | "
          f"{len(payload) / 2**20:.1f} | {t['box'] * 1000:.1f} ({int(box.sum()):,}) | "
          f"{t['lasso'] * 1000:.1f} ({int(inside.sum()):,}) |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=0, help="only the first N concepts (0: all 101 + background)")
    ap.add_argument("--fraction", type=float, default=0.05, help="share of training labels flipped")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--map", type=int, default=0, help="only measure the map's page-side costs at N points")
    ap.add_argument("--train", action="store_true", help="also train the Lite0 template on clean, noisy and fixed "
                    "data (the top N suggestions accepted) and report its test-list accuracy")
    args = ap.parse_args()
    if args.map:
        print("| points | drawn | figure ms | JSON ms | JSON MiB | box select ms (selected) | "
              "lasso select ms (selected) |")
        print("|---|---|---|---|---|---|---|")
        for n in (10_000, args.map):
            map_costs(n)
        return 0
    source = ROOT.parent / "shared" / "datasets" / "caltech101"
    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    os.environ["DEEPTRAIN_HOME"] = str(work / "home")
    try:
        if args.classes:
            source = subset(source, args.classes, work / "src")
        from core.data import quality
        from core.data.importer import import_dataset
        from core.store import datasets as ds_store

        t0 = time.perf_counter()
        report = import_dataset("local", source, "caltech101")
        import_s = time.perf_counter() - t0
        trained = {"clean": lite0_accuracy("clean")} if args.train else {}
        truth = flip(args.fraction, args.seed)
        if args.train:
            trained["noisy"] = lite0_accuracy("noisy")
        t1 = time.perf_counter()
        found = quality.find_issues_now("local", "caltech101")
        quality_s = time.perf_counter() - t1
        n = len(truth)
        label_rows = [r for r in found["issues"] if r["kind"] == "label"]
        top = label_rows[:n]
        studio_hits = [r for r in top if r["item"] in truth]
        studio_right = sum(r["suggested"] == truth[r["item"]] for r in studio_hits)

        # the reference on the very same (cached) embeddings: its time is the fit and cleanlab only
        ds = ds_store.get_dataset("local", "caltech101")
        records = ds_store.dataset_records(ds["id"])
        got = quality.embeddings(ds, records, "general")
        assert got is not None
        ids, vectors = got
        t2 = time.perf_counter()
        ref_ranked, ref_suggested = reference(ids, vectors, [r["labels"] for r in records], args.seed)
        ref_s = time.perf_counter() - t2
        ref_hits = [i for i in ref_ranked[:n] if i in truth]
        ref_right = sum(ref_suggested[i] == truth[i] for i in ref_hits)
        if args.train:  # accept the top N suggestions, as a user pressing "accept" on the list's first N rows
            quality.accept_suggestions("local", "caltech101", [r["item"] for r in top if r["suggested"]])
            trained["fixed"] = lite0_accuracy("fixed")

        print(f"Caltech-101{f' (first {args.classes} concepts)' if args.classes else ''}: {report['items']:,} images, "
              f"{len(report['concepts'])} concepts; {n} training labels flipped (seed {args.seed}); import "
              f"{import_s:.1f} s, quality check {quality_s:.1f} s (embedding and ranking; run's own figure "
              f"{found['seconds']:.1f} s)")
        print(f"label suspects listed: studio {len(label_rows)}, reference {len(ref_ranked)}; outliers "
              f"{found['counts']['outlier']}, near-duplicates {found['counts']['near_duplicate']}")
        print()
        print("| method | flipped | share of flipped in top N | true label suggested | seconds |")
        print("|---|---|---|---|---|")
        print(f"| studio (standardised, C={quality.LOGREG_C}, {quality.MAX_FOLDS}-fold, cleanlab) | {n} | "
              f"{len(studio_hits) / n:.3f} | {studio_right}/{len(studio_hits)} | "
              f"{import_s + quality_s:.1f} from import to list |")
        print(f"| reference (LogisticRegression(), 5-fold, cleanlab) | {n} | {len(ref_hits) / n:.3f} | "
              f"{ref_right}/{len(ref_hits)} | {ref_s:.1f} (fit + cleanlab on cached embeddings) |")
        if trained:
            print()
            print("| Lite0 transfer, defaults, trained on | test-list accuracy | seconds |")
            print("|---|---|---|")
            for label, (acc, secs) in trained.items():
                print(f"| {label} | {acc:.4f} | {secs:.0f} |")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
