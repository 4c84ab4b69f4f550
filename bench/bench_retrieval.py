"""Retrieval quality on Caltech-101 and embedding throughput: the general embedder vs a trained embedder.

The fixed split's train list is the index, its test list the queries; a result is relevant when it has the query's
class. For each model: precision@10 (through the product's index, ``core.search.index.build``) and mAP over the full
ranking (exact). Throughput: the product's embedding pipeline (``core.search.embed.embed_paths``: decode, the model's
preprocessing, forward, L2-normalise; prefetching) in images/s against the same network's plain forward pass
(``net.embed``) on the same images already preprocessed, in the same batches: the ratio (goal >= 0.9).

The trained embedder is either an existing model (``--model NAME`` in ``DEEPTRAIN_HOME``) or trained here with
``--train`` (in a temporary data directory: the train list imported, then ``core.training.train``).

    python bench/bench_retrieval.py --train                                    # full: ~6k index, ~3k queries
    python bench/bench_retrieval.py --classes 5 --per-class 8 --train --epochs 1 --image-size 64   # smoke

``--defaults`` measures what a new user gets, through the product only: the train list imported as the train split
and the test list as the test split, ``Studio_EfficientNetLite0_Transfer --kind embedder`` trained with its defaults
(timed from ``train()`` to the stored model), then ``core.evaluation.service.evaluate`` (queries: the test split,
gallery: the train split) beside the general embedder's figures on the same split (the evaluation's ``baseline``).
The plain reference is the general embedder indexing the same images (``embed_paths`` over both lists, timed).
Goal (issue 25): mAP@R at least 0.10 above the general embedder's, recall@1 >= 0.92, training under 2x the indexing.

    python bench/bench_retrieval.py --defaults                                 # full Caltech-101
    python bench/bench_retrieval.py --defaults --classes 5 --per-class 12      # smoke
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


def read_split(root: Path, name: str, classes: list[str] | None, per_class: int | None) -> list[tuple[str, str]]:
    """(path, class) pairs of a split list, optionally only some classes and at most ``per_class`` each."""
    out, seen = [], {}
    for line in (root / f"{name}.txt").read_text().split():
        cls = line.split("/", 1)[0]
        if classes is not None and cls not in classes:
            continue
        if per_class is not None and seen.get(cls, 0) >= per_class:
            continue
        seen[cls] = seen.get(cls, 0) + 1
        out.append((str(root / "101_ObjectCategories" / line), cls))
    return out


def average_precision(relevant: np.ndarray) -> float:
    """AP of one ranking given the relevance (bool) of each ranked item."""
    hits = np.cumsum(relevant)
    if hits[-1] == 0:
        return 0.0
    ranks = np.arange(1, len(relevant) + 1)
    return float((hits / ranks)[relevant].sum() / hits[-1])


def quality(train_vecs, train_cls, test_vecs, test_cls) -> dict:
    """precision@10 via the product's index, mAP via exact full ranking."""
    from core.search import index as vindex

    ids = np.arange(len(train_vecs), dtype=np.int64)
    index = vindex.build(ids, train_vecs)
    _, found = index.search(test_vecs, 10)
    train_cls, test_cls = np.asarray(train_cls), np.asarray(test_cls)
    p10 = float((train_cls[found] == test_cls[:, None]).mean())
    sims = test_vecs @ train_vecs.T
    order = np.argsort(-sims, axis=1)
    m_ap = float(np.mean([average_precision(train_cls[o] == c) for o, c in zip(order, test_cls)]))
    return {"precision@10": p10, "mAP": m_ap, "index": index.backend}


def throughput(model, paths: list[str], repeats: int = 3) -> dict:
    """Images/s of the product pipeline vs the plain forward pass on the same preprocessed batches.

    The plain forward is the network as built, in PyTorch's default (contiguous) memory format, on the batches
    ``model.transform`` makes; the pipeline is the product's (the model as loaded, channels_last where
    ``core.device.channels_last_for`` says so, decoding included). The two are interleaved ``repeats`` times and each
    keeps its best run, so a busy neighbour skews both alike.
    """
    import copy

    import torch

    from core.search import embed

    plain_net = copy.deepcopy(model.net).to(memory_format=torch.contiguous_format)

    paths = paths[: max(embed.BATCH_SIZE * 4, min(len(paths), 512))]
    batches = [torch.stack([model.transform(embed.open_image(p)) for p in paths[i:i + embed.BATCH_SIZE]])
               for i in range(0, len(paths), embed.BATCH_SIZE)]
    embed.embed_paths(model, paths[: embed.BATCH_SIZE])  # warm-up
    pipe = plain = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        embed.embed_paths(model, paths)
        pipe = max(pipe, len(paths) / (time.perf_counter() - t0))
        with torch.inference_mode():
            t0 = time.perf_counter()
            for b in batches:
                plain_net.embed(b)
            plain = max(plain, len(paths) / (time.perf_counter() - t0))
    return {"pipeline_ips": pipe, "plain_ips": plain, "ratio": pipe / plain, "images": len(paths)}


def train_embedder(train: list[tuple[str, str]], args) -> tuple[object, str]:
    """Import the train list into a temporary data directory and train the embedder there; returns the model."""
    home = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    os.environ["DEEPTRAIN_HOME"] = str(home)
    src = home / "src"
    for path, cls in train:
        (src / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, src / cls / Path(path).name)
    from core.data.importer import import_dataset
    from core.models.io import load_model_dir
    from core.store import models as mstore
    from core.training import train
    from core.training.callbacks import ConsoleCallbacks

    import_dataset("local", src, "caltech-train")
    params = {"image_size": args.image_size, "num_epochs": args.epochs, "batch_size": args.batch_size,
              "base_gradient_multiplier": args.base_gradient_multiplier, "lrate": args.lrate,
              "pretrained_weights": "ImageNet-1k"}
    config = {"owner": "local", "dataset": "caltech-train", "kind": "embedder", "template": args.template,
              "params": params, "name": "bench-embedder", "seed": 0}
    t0 = time.perf_counter()
    res = train(config, home / "run", ConsoleCallbacks(quiet=not args.verbose))
    row = mstore.get_model_by_id(res.model_id)
    desc = f"{args.template} trained {time.perf_counter() - t0:.0f} s, {params}"
    return load_model_dir(row["path"]), desc


def defaults_run(train: list[tuple[str, str]], test: list[tuple[str, str]], template: str) -> None:
    """The --defaults measurement (see the module docstring); prints a table."""
    home = Path(tempfile.mkdtemp(prefix="bench-retrieval-defaults-"))
    os.environ["DEEPTRAIN_HOME"] = str(home)
    src = home / "src"
    lines = ["path,labels,split"]
    for items, split in ((train, "train"), (test, "test")):
        for path, cls in items:
            (src / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, src / cls / Path(path).name)
            lines.append(f"{cls}/{Path(path).name},{cls},{split}")
    (src / "manifest.csv").write_text("\n".join(lines) + "\n")
    from core.data.importer import import_dataset
    from core.evaluation import service
    from core.models.general import general_embedder
    from core.search import embed
    from core.training import train as train_model
    from core.training.callbacks import ConsoleCallbacks

    import_dataset("local", src / "manifest.csv", "caltech", fmt="csv")
    general = general_embedder()
    embed.embed_paths(general, [p for p, _ in train[:32]])  # warm-up, as the training's first batch pays its own
    t0 = time.perf_counter()
    embed.embed_paths(general, [p for p, _ in train + test])
    index_s = time.perf_counter() - t0
    config = {"owner": "local", "dataset": "caltech", "kind": "embedder", "template": template, "params": {},
              "name": "defaults", "seed": 0}
    t0 = time.perf_counter()
    res = train_model(config, home / "run", ConsoleCallbacks(quiet=True))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = service.evaluate("local", "defaults")
    eval_s = time.perf_counter() - t0
    base = result["baseline"]
    tuned = res.metrics.get("tuned_lrate")
    print(f"| model | recall@1 | recall@5 | mAP@R | seconds | x indexing |\n|---|---|---|---|---|---|\n"
          f"| general embedder (reference: indexing {len(train) + len(test)} images) | {base['recall_at_1']:.3f} | "
          f"{base['recall_at_5']:.3f} | {base['map_at_r']:.3f} | {index_s:.1f} | 1.00 |\n"
          f"| {template} embedder, defaults (train() to stored model) | {result['recall_at_1']:.3f} | "
          f"{result['recall_at_5']:.3f} | {result['map_at_r']:.3f} | {train_s:.1f} | {train_s / index_s:.2f} |")
    print(f"mAP@R gain {result['map_at_r'] - base['map_at_r']:+.3f}; evaluation (both embedders) {eval_s:.0f} s; "
          f"head tuned lrate: {tuned}; {result['queries']} queries, gallery {result['gallery']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "caltech101"))
    ap.add_argument("--classes", type=int, default=None, help="only the first N classes (smoke runs)")
    ap.add_argument("--per-class", type=int, default=None, help="at most N images per class in each list")
    ap.add_argument("--model", default=None, help="a trained embedder/classifier in DEEPTRAIN_HOME")
    ap.add_argument("--train", action="store_true", help="train an embedder on the train list first")
    ap.add_argument("--template", default="Studio_EfficientNetLite0_Transfer")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=160, help="Caltech copy's longer side is 160 px")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lrate", type=float, default=0.05)
    ap.add_argument("--base-gradient-multiplier", type=float, default=0.1, help="> 0: the backbone learns too")
    ap.add_argument("--defaults", action="store_true", help="train and evaluate the template with its defaults "
                    "through the product, against the general embedder (issue 25)")
    ap.add_argument("--throughput-only", action="store_true", help="skip the quality figures (embedding both lists)")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    root = Path(args.data)
    if not (root / "train.txt").is_file():
        sys.exit(f"Caltech-101 not found at {root}")
    import torch

    from core.device import keep_freed_memory

    keep_freed_memory()  # as in the job worker that builds indexes (and trains)
    classes = None
    if args.classes:
        classes = sorted({ln.split("/", 1)[0] for ln in (root / "train.txt").read_text().split()})[: args.classes]
    train = read_split(root, "train", classes, args.per_class)
    test = read_split(root, "test", classes, args.per_class)
    print(f"# Caltech-101: index {len(train)} train images, {len(test)} test queries, "
          f"{len({c for _, c in train})} classes; torch threads {torch.get_num_threads()}", flush=True)
    if args.defaults:
        defaults_run(train, test, args.template)
        return

    from core.models.general import general_embedder
    from core.models.io import load_model_dir
    from core.search import embed

    models = [("general", general_embedder(), "EfficientNet-Lite0 ImageNet, 224 px")]
    if args.train:
        trained, desc = train_embedder(train, args)
        models.append(("trained", trained, desc))
    elif args.model:
        from core.store import models as mstore

        row = mstore.get_model("local", args.model)
        models.append((row["name"], load_model_dir(row["path"]), f"{row['kind']} {row['template']}"))

    print(f"{'model':<10} {'dim':>5} {'index':>6} {'P@10':>6} {'mAP':>6} | {'pipe img/s':>10} {'plain img/s':>11} "
          f"{'ratio':>6}  notes")
    for label, model, desc in models:
        if args.throughput_only:
            q, cols, done = {"index": "-"}, f"{'-':>6} {'-':>6}", ""
        else:
            t0 = time.perf_counter()
            tv = embed.embed_paths(model, [p for p, _ in train])
            qv = embed.embed_paths(model, [p for p, _ in test])
            done = f"; embedded {len(tv) + len(qv)} in {time.perf_counter() - t0:.0f} s"
            q = quality(tv, [c for _, c in train], qv, [c for _, c in test])
            cols = f"{q['precision@10']:6.3f} {q['mAP']:6.3f}"
        tp = throughput(model, [p for p, _ in train])
        print(f"{label:<10} {model.embedding_dim:>5} {q['index']:>6} {cols} | "
              f"{tp['pipeline_ips']:10.1f} {tp['plain_ips']:11.1f} {tp['ratio']:6.2f}  {desc}{done}", flush=True)


if __name__ == "__main__":
    main()
