"""How the Lite0 transfer heads' defaults were chosen: learning rates and the embedder's projection, on cached features.

The frozen ImageNet EfficientNet-Lite0 features of Caltech-101's train and test lists are computed once the engine's
way (the template's network, resize and runtime: ``core.training``) and kept in ``bench/out/``. On them:

- ``classifier``: the Lite0 classifier's head as the engine trains it (linear, SGD momentum 0.9, weight decay 1e-4 on
  the weights, constant rate, batch 64, 30 epochs, shuffled epochs) at each learning rate of a grid, at 5, 10 and 20
  training images per concept and on the whole train list, test-list top-1; what ``tune_head`` picks on a held-out
  fold (``core.training.tuning``: the same fold and rule); beside the plain reference, scikit-learn's
  ``LogisticRegressionCV`` on the L2-normalised features (C by cross-validation on the training images).
- ``spread``: the default head's fit (``core.training.tuning.fit_logistic`` on the power-normalised features) and the
  plain probe on the whole train list (or its first N images per concept), the training features first as cached,
  then times (1 + 1e-6 x a seeded normal draw) per draw: how much of a difference between the two the benchmark can
  resolve.
- ``embedder``: the Lite0 embedder's head (linear projection to D, cosine classifier, additive angular margin loss:
  ``core.models.heads``) for each (D, scale, margin, rate) given; recall@1, recall@5 and mAP@R of the test list
  against the train list (``core.evaluation.metrics.embedder_metrics``), beside the untrained general embedder (the
  same features, L2-normalised).

    python bench/bench_heads.py classifier
    python bench/bench_heads.py spread --draws 4   # the fitted head and the probe under float-level noise
    python bench/bench_heads.py spread --draws 6 --per-class 10   # the same at 10 training images per concept
    python bench/bench_heads.py embedder 256,16,0.2,0.03 256,16,0.0,0.1 256,64,0.2,0.1   # D,scale,margin,lrate
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEMPLATE = "Studio_EfficientNetLite0_Transfer"
LRATES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


def features(image_size: int = 224) -> dict[str, np.ndarray]:
    """{train_x, train_y, test_x, test_y}: pooled Lite0 features as the engine computes them, cached on disk."""
    out = ROOT / "bench" / "out" / f"caltech101-lite0-{image_size}.npz"
    if out.is_file():
        with np.load(out) as z:
            return {k: z[k] for k in z.files}
    import torch

    from core import paths
    from core.models import build_network, preprocess_config
    from core.training import data as tdata
    from core.training.runtime import Runtime, training_device

    root = paths.caltech101_dir()
    params = {"image_size": image_size, "pretrained_weights": "ImageNet-1k"}
    net = build_network("classifier", TEMPLATE, params, 2)
    rt = Runtime.create(training_device(), preprocess_config("classifier", TEMPLATE, params), detector=False)
    rt.place(net)
    net.eval()
    data: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        rels = (root / f"{split}.txt").read_text().split()
        files = [str(root / "101_ObjectCategories" / r) for r in rels]
        parts = []
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool, torch.inference_mode():
            for i in range(0, len(files), 64):
                u8 = np.stack(list(pool.map(lambda f: tdata._resize(f, image_size, "short_side_crop")[0],
                                            files[i:i + 64])))
                parts.append(net.features(rt.input(torch.from_numpy(u8))).float().numpy())
        print(f"# {split}: {len(files)} images in {time.perf_counter() - t0:.0f} s", flush=True)
        data[f"{split}_x"] = np.concatenate(parts)
        data[f"{split}_y"] = np.array([r.split("/")[0] for r in rels])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **data)
    return data


def unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (L2-normalised)."""
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def fit_probe(x: np.ndarray, y: np.ndarray):
    """The plain reference: scikit-learn's LogisticRegressionCV on the L2-normalised features, C from 1e-2 to 1e3 by
    k-fold cross-validation (k = 5, or the smallest class's count); it predicts from L2-normalised features too."""
    import warnings

    from sklearn.linear_model import LogisticRegressionCV

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return LogisticRegressionCV(Cs=np.logspace(-2, 3, 6).tolist(), cv=int(min(5, np.bincount(y).min())),
                                    max_iter=2000).fit(unit(x), y)


def train_head(x: np.ndarray, y: np.ndarray, lrate: float, n_classes: int, epochs: int = 30, batch: int = 64,
               seed: int = 0, projection: tuple[int, float, float] | None = None):
    """The engine's head on fixed features: linear (classifier), or projection + cosine classifier with an angular
    margin (embedder: (D, scale, margin)); returns a function from features to (logits, embedding)."""
    import torch
    import torch.nn.functional as F

    from core.models.heads import CosineClassifier, angular_margin_loss

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if projection is None:
        head: torch.nn.Module = torch.nn.Linear(x.shape[1], n_classes)
        neck: torch.nn.Module = torch.nn.Identity()
    else:
        neck, head = torch.nn.Linear(x.shape[1], projection[0]), CosineClassifier(projection[0], n_classes)
    decay = [p for m in (neck, head) for p in m.parameters() if p.ndim > 1]
    plain = [p for m in (neck, head) for p in m.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 1e-4}, {"params": plain, "weight_decay": 0.0}],
                          lr=lrate, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            b = order[i:i + batch]
            out = head(neck(xt[b]))
            loss = (F.cross_entropy(out, yt[b]) if projection is None
                    else angular_margin_loss(out, yt[b], projection[1], projection[2]))
            opt.zero_grad()
            loss.backward()
            opt.step()

    def apply(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            e = neck(torch.from_numpy(f))
            return head(e).numpy(), F.normalize(e, dim=1).numpy()

    return apply


def classifier(data: dict[str, np.ndarray]) -> None:
    from core.training.tuning import LRATE_GRID, validation_fold

    classes = sorted(set(data["train_y"]))
    index = {c: i for i, c in enumerate(classes)}
    ytr_all = np.array([index[c] for c in data["train_y"]])
    yte = np.array([index[c] for c in data["test_y"]])
    xte = data["test_x"]
    print("| train images | probe top-1 (C) | probe fit s | " + " | ".join(f"lrate {r:g}" for r in LRATES)
          + " | tune_head picks | its top-1 |\n|" + "---|" * (len(LRATES) + 5), flush=True)
    for per in (5, 10, 20, None):
        rng = np.random.default_rng(0)
        rows = np.arange(len(ytr_all)) if per is None else np.sort(np.concatenate(
            [rng.permutation(np.flatnonzero(ytr_all == c))[:per] for c in range(len(classes))]))
        x, y = data["train_x"][rows], ytr_all[rows]
        acc = {}
        for r in LRATES:
            logits, _ = train_head(x, y, r, len(classes))(xte)
            acc[r] = float((logits.argmax(1) == yte).mean())
        fit, held = validation_fold(y, seed=0)
        losses = {}
        for r in LRATE_GRID:
            logits, _ = train_head(x[fit], y[fit], r, len(classes))(x[held])
            z = logits - logits.max(1, keepdims=True)
            losses[r] = float(-(z[np.arange(len(held)), y[held]] - np.log(np.exp(z).sum(1))).mean())
        pick = min(losses, key=losses.__getitem__)
        picked = acc.get(pick)
        if picked is None:
            logits, _ = train_head(x, y, pick, len(classes))(xte)
            picked = float((logits.argmax(1) == yte).mean())
        t0 = time.perf_counter()
        probe = fit_probe(x, y)
        fit_s = time.perf_counter() - t0
        probe_acc = float((probe.predict(unit(xte)) == yte).mean())
        print(f"| {len(y)} | {probe_acc:.4f} ({probe.C_[0]:g}) | {fit_s:.0f} | "
              + " | ".join(f"{acc[r]:.4f}" for r in LRATES) + f" | {pick:g} | {picked:.4f} |", flush=True)


def first(labels: np.ndarray, n: int) -> np.ndarray:
    """Positions of the first ``n`` items of each label, in list order."""
    seen: dict[str, int] = {}
    keep = []
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] <= n:
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def spread(data: dict[str, np.ndarray], draws: int, per_class: int = 0, probe: bool = True) -> None:
    """How far float-level differences in the features move the test top-1 of the default head's fit and
    of the plain probe: the training features times (1 + 1e-6 x a seeded normal draw), about eight float32 rounding
    steps, draw 0 without. ``per_class``: the first N training images of each concept in the train list and the first
    10 of each in the test list, as ``bench_train.py --sizes`` takes them (0: the whole lists). ``probe`` False: the
    fit only (the probe's figures for the same draws are those of an earlier run: it is seeded and unchanged)."""
    import torch

    from core.models.heads import SqrtL2Norm
    from core.training.tuning import fit_logistic

    if per_class:
        data = {**{f"train_{k}": data[f"train_{k}"][first(data["train_y"], per_class)] for k in "xy"},
                **{f"test_{k}": data[f"test_{k}"][first(data["test_y"], 10)] for k in "xy"}}
    classes = sorted(set(data["train_y"]))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in data["train_y"]])
    yte = np.array([index[c] for c in data["test_y"]])
    onehot = np.eye(len(classes))[y]

    def sqrt_l2(a: np.ndarray) -> np.ndarray:  # the default neck (normalize_features sqrt), as the engine runs it
        with torch.no_grad():
            return SqrtL2Norm()(torch.from_numpy(a)).numpy()

    test_sqrt, test_unit = sqrt_l2(data["test_x"]), unit(data["test_x"])  # the test features get no noise
    print("| draw | defaults' fit top-1 (C) | probe top-1 (C) |\n|---|---|---|", flush=True)
    tops: dict[str, list[float]] = {"fit": [], "probe": []}
    for draw in range(draws + 1):
        x = data["train_x"]
        if draw:
            x = x * (1 + 1e-6 * np.random.default_rng(draw).standard_normal(x.shape)).astype(np.float32)
        fit = fit_logistic(sqrt_l2(x), onehot, y)
        chosen, fit_top1 = fit.C, float((fit.probabilities(test_sqrt, len(classes)).argmax(1) == yte).mean())
        tops["fit"].append(fit_top1)
        shown = "-"
        if probe:
            reference = fit_probe(x, y)
            tops["probe"].append(float((reference.predict(test_unit) == yte).mean()))
            shown = f"{tops['probe'][-1]:.4f} ({reference.C_[0]:g})"
        print(f"| {draw or 'none'} | {fit_top1:.4f} ({chosen:g}) | {shown} |", flush=True)
    means = [f"{np.mean(t[1:]):.4f}" if len(t) > 1 else "-" for t in (tops["fit"], tops["probe"])]
    print(f"| mean of the {draws} draws | {means[0]} | {means[1]} |")


def embedder(data: dict[str, np.ndarray], settings: list[str]) -> None:
    from core.evaluation.metrics import embedder_metrics

    classes = sorted(set(data["train_y"]))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in data["train_y"]])
    q_labels, g_labels = [[c] for c in data["test_y"]], [[c] for c in data["train_y"]]

    def figures(q: np.ndarray, g: np.ndarray) -> str:
        m = embedder_metrics(q, q_labels, g, g_labels)
        return f"{m['recall_at_1']:.4f} | {m['recall_at_5']:.4f} | {m['map_at_r']:.4f}"

    print("| embedding | recall@1 | recall@5 | mAP@R | train s |\n|---|---|---|---|---|")
    print(f"| general (untrained, 1280-d) | {figures(unit(data['test_x']), unit(data['train_x']))} | - |", flush=True)
    for s in settings:
        dim, scale, margin, lrate = s.split(",")
        t0 = time.perf_counter()
        apply = train_head(data["train_x"], y, float(lrate), len(classes),
                           projection=(int(dim), float(scale), float(margin)))
        seconds = time.perf_counter() - t0
        print(f"| D {dim}, scale {scale}, margin {margin}, lrate {lrate} | "
              f"{figures(apply(data['test_x'])[1], apply(data['train_x'])[1])} | {seconds:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("classifier", "embedder", "spread"))
    ap.add_argument("settings", nargs="*", default=["256,16,0.2,0.03"], help="embedder: D,scale,margin,lrate ...")
    ap.add_argument("--draws", type=int, default=4, help="spread: noisy draws of the features")
    ap.add_argument("--per-class", type=int, default=0, help="spread: the first N training images per concept")
    ap.add_argument("--no-probe", action="store_true", help="spread: the fit only")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # as the engine trains a head on cached features (CPU_HEAD_THREADS)
    data = features()
    if args.what == "spread":
        spread(data, args.draws, args.per_class, not args.no_probe)
    else:
        classifier(data) if args.what == "classifier" else embedder(data, args.settings)


if __name__ == "__main__":
    main()
