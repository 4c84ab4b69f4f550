"""The head tunes itself (``tune_head``): with a frozen backbone the features are cached, so the head can choose its
own settings before the real run.

- A classifier whose head is one linear layer with softmax (``fits_head``) is fitted, not stepped: scikit-learn's
  LogisticRegressionCV (multinomial, L-BFGS) on the features as the network's neck gives them (normalize_features:
  power-normalised by default), its L2 penalty C chosen from ``C_GRID`` by the best held-out top-1 in k-fold
  cross-validation on the training split (ties to the stronger penalty), then fitted from zero on the whole split and
  written into the classifier. It is the plain probe a user would otherwise run beside the studio, on better-conditioned
  features; measured on Caltech-101 and Fashion-MNIST subsets, no SGD schedule of the head reached it at small sizes
  (bench/README.md, "The defaults at every size"). The fit cannot be stopped halfway: a cancel during it waits for it
  or ends the worker.
- Any other head (an embedder's projection, a sigmoid or two-layer head) tries each candidate learning rate from
  ``LRATE_GRID``, from the run's own initial weights and for the run's own epochs, on a fold of the training split;
  the rate with the lowest loss on the held-out rest wins, and the run then trains on the whole split with it, exactly
  as a run with that rate set by hand would (same initial weights, same batches).

Nothing here runs when ``tune_head`` is off: such a run is unchanged, weight for weight.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from core.templates import get_template
from core.templates.schedule import make_schedule
from core.training import data as tdata
from core.training.build import Run
from core.training.modes import Batch
from core.training.modes.features import FeaturesMode
from core.training.optim import make_optimizer, set_lr
from core.training.state import StopRequested

# Candidate rates: half-decades around the measured optimum of the transfer heads on Caltech-101 and Fashion-MNIST
# subsets (bench/README.md, "The head tunes itself"); only those within the template's bounds are tried.
LRATE_GRID = (0.003, 0.01, 0.03, 0.1)
# The fitted head's penalties: scikit-learn's C (the inverse of the L2 penalty on the summed loss), decades from 1e-2.
# Not 1e3, which the plain probe of bench_train.py also tries: that weakly penalised, the loss is so flat that the fit
# ends wherever L-BFGS's tolerance is first met, so the outcome is the optimiser's, not the penalty's. On the whole
# Caltech-101 train list (power-normalised features) a fit at 1e3 from zero stopped after 54 iterations at 0.9255 test
# top-1, at a 100x tighter tolerance reached 0.9318, and from the folds' mean (LogisticRegressionCV's refit) 0.9298 in
# the engine and 0.9315 beside it; at 1e2 the first two were 0.9305 and 0.9292. Cross-validation cannot tell 1e3 from
# 1e2: its folds' fits at 1e3 start from those at 1e2 and barely move (held-out top-1 at most 0.03 points above on six
# datasets), and the refit from zero at 1e3 scored below 1e2 on all six (bench/README.md, "The defaults at every size").
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
FALLBACK_C = 1.0  # scikit-learn's default, when the training split is too small to cross-validate
MAX_FOLDS = 5
FIT_MAX_ITER = 2000
LOGISTIC = "logistic_regression"
VAL_SHARE = 0.2  # of each concept's training images, held out to compare the candidates
MIN_VAL_ITEMS = 10  # fewer held-out images than this say nothing: the run keeps the rate it was given
PARAM = "lrate"
# What the fitted head's inputs were, by normalize_features (a model fitted before it was recorded says nothing)
FEATURES_TEXT = {"sqrt": "power-normalised features (signed square roots at unit length)",
                 "yes": "L2-normalised features", "no": "raw features"}


def tuning_applies(run: Run) -> str | None:
    """Why the head cannot tune itself in this run (None: it can)."""
    if not run.plan.params.get("tune_head"):
        return "off"
    if not run.mode.frozen_backbone:
        return ("the backbone trains too (base_gradient_multiplier above 0), so the features are not cached and "
                "trying several settings would cost several full runs")
    if fits_head(run):
        return None
    if not get_template(run.plan.kind, run.plan.template).has(PARAM):
        return f"{run.plan.template} has no {PARAM}"
    return None


def fits_head(run: Run) -> bool:
    """The head is one linear layer with softmax over parameter-free features (the backbone's, or their L2
    normalisation): a convex problem, fitted to convergence rather than stepped."""
    net = run.net
    neck = getattr(net, "neck", None)
    return (run.plan.loss == "ce" and isinstance(getattr(net, "classifier", None), torch.nn.Linear)
            and isinstance(neck, torch.nn.Module) and not any(True for _ in neck.parameters()))


def tune(run: Run) -> dict[str, Any] | None:
    """The head's settings for this run (``tuning_applies`` said it can): fitted, or its rate tried on a fold."""
    return fit_head(run) if fits_head(run) else tune_head(run)


def grid(run: Run) -> list[float]:
    """The candidates within the template's bounds for ``lrate``."""
    spec = get_template(run.plan.kind, run.plan.template).param(PARAM)
    lo = -math.inf if spec.min is None else float(spec.min)
    hi = math.inf if spec.max is None else float(spec.max)
    return [v for v in LRATE_GRID if lo <= v <= hi]


def validation_fold(labels: np.ndarray, seed: int, share: float = VAL_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) positions into ``labels``: ``share`` of each label's items held out (rounded, at least one
    where a label has two or more items; a label seen once stays in the fit part), drawn with ``seed``."""
    rng = np.random.default_rng([int(seed), 31337])
    held: list[int] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if len(idx) < 2:
            continue
        k = min(len(idx) - 1, max(1, int(round(share * len(idx)))))
        held.extend(rng.permutation(idx)[:k].tolist())
    held_arr = np.array(sorted(held), dtype=np.int64)
    fit = np.setdiff1d(np.arange(len(labels)), held_arr)
    return fit, held_arr


def tune_head(run: Run) -> dict[str, Any] | None:
    """Pick ``lrate`` for this run's head from ``grid(run)`` on a held-out fold; None when the fold is too small.

    Returns ``{"param", "chosen", "grid", "candidates": [{"lrate", "val_loss", "val_top1"}], "fit_items",
    "val_items", "seconds"}``. The network's head is back at its initial weights afterwards.
    """
    plan, mode, cb = run.plan, run.mode, run.cb
    t0 = time.perf_counter()
    rows = mode.train_rows
    fit, held = validation_fold(mode.single_train[rows], plan.seed)
    if len(held) < MIN_VAL_ITEMS:
        cb.log(f"head tuning skipped: {len(held)} held-out images (at least {MIN_VAL_ITEMS} needed); "
               f"{PARAM} {plan.params[PARAM]} as set")
        return None
    fit_rows, held_rows = rows[fit], rows[held]
    candidates = grid(run)
    cb.log(f"head tuning: {PARAM} from {_fmt_grid(candidates)}, each trained {run.num_epochs} epochs on "
           f"{len(fit_rows)} images and compared on {len(held_rows)} held out")
    initial = _trainable_state(run.net)
    results = []
    with _rng_kept():
        for i, lrate in enumerate(candidates):
            val_loss, val_top1 = _try(run, lrate, fit_rows, held_rows, i, len(candidates))
            results.append({PARAM: lrate, "val_loss": val_loss, "val_top1": val_top1})
            cb.log(f"head tuning: {PARAM} {lrate:g}: held-out loss {val_loss:.4f}, top-1 {val_top1:.4f}")
            _restore(run.net, initial)
    finite = [r for r in results if math.isfinite(r["val_loss"])]
    if not finite:
        cb.log(f"head tuning: every candidate diverged; {PARAM} {plan.params[PARAM]} as set")
        return None
    chosen = min(finite, key=lambda r: (r["val_loss"], r[PARAM]))[PARAM]
    seconds = time.perf_counter() - t0
    cb.log(f"head tuned: {PARAM} {chosen:g} of {_fmt_grid(candidates)} ({seconds:.1f} s)")
    return {"param": PARAM, "chosen": chosen, "grid": candidates, "candidates": results,
            "fit_items": int(len(fit_rows)), "val_items": int(len(held_rows)), "seconds": round(seconds, 3)}


def apply_tuning(run: Run, tuned: dict[str, Any]) -> None:
    """Train the run with the tuned rate: its schedule rebuilt from the parameters with ``lrate`` replaced. A fitted
    head (its weights are already in the network, or in the checkpoint a resume loads) has one epoch and no steps."""
    if tuned.get("method") == LOGISTIC:
        run.mode.num_epochs, run.steps_per_epoch = 1, 1
        run.head_fitted = True
        return
    params = {**run.plan.params, tuned["param"]: tuned["chosen"]}
    run.schedule = make_schedule(run.plan.kind, run.plan.template, params, run.steps_per_epoch)


def describe(tuned: dict[str, Any] | None) -> str:
    """One line for people: "head tuned: lrate 0.01 of {0.003, 0.01, 0.03, 0.1}", or "head fitted: logistic
    regression on power-normalised features (...), C 100 of {0.01, ..., 100}" ("" when not tuned)."""
    if not tuned:
        return ""
    if tuned.get("method") == LOGISTIC:
        on = f" on {FEATURES_TEXT[tuned['features']]}" if tuned.get("features") in FEATURES_TEXT else ""
        return f"head fitted: logistic regression{on}, C {tuned['chosen']:g} of {_fmt_grid(tuned['grid'])}"
    return f"head tuned: {tuned['param']} {tuned['chosen']:g} of {_fmt_grid(tuned['grid'])}"


def fit_head(run: Run) -> dict[str, Any]:
    """Fit the classifier as a logistic regression on the cached features (``fit_logistic``) and write it into the
    network's linear classifier.

    Returns ``{"method", "param": "C", "chosen", "grid", "candidates": [{"C", "val_loss", "val_top1"}] (over the folds'
    held-out images), "folds", "fit_items", "val_items", "train_loss", "seconds", "features"}`` (features: the
    resolved normalize_features).
    """
    mode, cb = run.mode, run.cb
    t0 = time.perf_counter()
    rows = mode.train_rows
    x = _neck_features(run, rows)
    multi = mode.multi_train[rows]
    features = str(run.plan.params.get("normalize_features", "no"))
    cb.on_step({"epoch": 0, "step": 0, "steps_per_epoch": 1, "loss": float("nan"), "lr": 0.0, "images_per_sec": 0.0,
                "eta_s": 0.0, "phase": "tuning"})
    clf, chosen, results, folds = fit_logistic(x, multi, mode.single_train[rows], cb.log, cb.should_stop,
                                               f"{len(rows)} images' {FEATURES_TEXT.get(features, 'features')}")
    if cb.should_stop():
        raise StopRequested()
    train_loss, _ = _scores(_probabilities(clf, x, multi.shape[1]), multi)
    _set_classifier(run, clf)
    seconds = time.perf_counter() - t0
    cb.log(f"head fitted: logistic regression, C {chosen:g} of {_fmt_grid(list(C_GRID))}, training loss "
           f"{train_loss:.4f} ({seconds:.1f} s)")
    return {"method": LOGISTIC, "param": "C", "chosen": chosen, "grid": list(C_GRID), "candidates": results,
            "folds": folds, "fit_items": int(len(rows)), "val_items": int(len(rows)) if folds else 0,
            "train_loss": round(float(train_loss), 6), "seconds": round(seconds, 3),
            "features": features}


def fit_logistic(x: np.ndarray, multi: np.ndarray, single: np.ndarray, log: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 what: str = "features") -> tuple[Any, float, list[dict[str, Any]], int]:
    """A multinomial logistic regression on rows ``x`` (n, d) with labels ``multi`` (n, concepts; 0/1) and one label
    per image ``single`` (n,) to stratify the folds by; C chosen by k-fold cross-validation (scikit-learn's
    LogisticRegressionCV: each fold's path of fits from the strongest penalty to the weakest; the C with the best
    held-out top-1 over all folds' images, ties to the smaller C), then fitted from zero on every image.

    An image with k labels counts 1/k for each (the soft targets of the "ce" loss), all its rows in one fold. Returns
    (the fitted ``LogisticRegression``, C, each candidate's {"C", "val_loss", "val_top1"}, the number of folds: 0
    when there are too few images to cross-validate and C is scikit-learn's default).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    log = log or (lambda line: None)
    img, label = np.nonzero(multi)  # one row per (image, label), weighted 1/labels
    weight = 1.0 / multi.sum(1)[img]
    folds = _folds(single)
    results: list[dict[str, Any]] = []
    with warnings.catch_warnings():  # at the weakest penalties on separable data the optimum runs off; keep its best
        warnings.simplefilter("ignore", ConvergenceWarning)
        if folds:
            log(f"head fitting: logistic regression on {what}, C from {_fmt_grid(list(C_GRID))} by {len(folds)}-fold "
                "cross-validation (best held-out top-1); lrate, batch_size and num_epochs are not used")
            row_folds = [(np.flatnonzero(np.isin(img, fit)), np.flatnonzero(np.isin(img, held))) for fit, held in folds]
            path: Any = LogisticRegressionCV(Cs=list(C_GRID), cv=row_folds, scoring="accuracy", l1_ratios=(0.0,),
                                             max_iter=FIT_MAX_ITER, refit=False, use_legacy_attributes=False)
            path.fit(x[img], label, sample_weight=weight)
            for i, c in enumerate(C_GRID):
                loss, top1 = _path_scores(path, i, x, multi, folds)
                results.append({"C": c, "val_loss": loss, "val_top1": top1})
                log(f"head fitting: C {c:g}: held-out loss {loss:.4f}, top-1 {top1:.4f}")
            chosen = min(results, key=lambda r: (-r["val_top1"], r["C"]))["C"]  # ties to the stronger penalty
        else:
            chosen = FALLBACK_C
            log(f"head fitting: {len(x)} training images are too few to cross-validate (at least {MIN_VAL_ITEMS} "
                f"needed); C {chosen:g}, scikit-learn's default")
        if should_stop is not None and should_stop():
            raise StopRequested()
        # fitted from zero, not from the folds' mean as LogisticRegressionCV's refit starts: the head is the
        # regression at C, not wherever the folds' fits happened to stop (see C_GRID)
        clf = LogisticRegression(C=chosen, max_iter=FIT_MAX_ITER).fit(x[img], label, sample_weight=weight)
    return clf, float(chosen), results, len(folds)


def _neck_features(run: Run, rows: np.ndarray) -> np.ndarray:
    """The classifier's inputs for these training rows: the cached features through the network's neck (float32)."""
    mode = run.mode
    assert isinstance(mode, FeaturesMode)  # fits_head runs only on a frozen backbone's cached features
    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), 4096):
            f = run.rt.tensor(np.ascontiguousarray(mode.features["orig"][rows[i:i + 4096]]))
            out.append(mode.net.embed_from_features(f.float()).float().cpu().numpy())
    return np.concatenate(out)


def _folds(single: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (fit, held-out) positions in the training split's order: k = 5, or the smallest concept's
    image count when lower (at least 2); none when there are fewer than ``MIN_VAL_ITEMS`` images or a single
    concept."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(single)
    counts = counts[counts > 0]
    if len(single) < MIN_VAL_ITEMS or len(counts) < 2 or counts.max() < 2:
        return []
    k = int(min(MAX_FOLDS, max(2, counts.min())))
    with warnings.catch_warnings():  # a concept with fewer than k images is held out in fewer folds; that is fine
        warnings.simplefilter("ignore", UserWarning)
        # unshuffled, as LogisticRegressionCV's folds: consecutive images (a video's frames, a burst) stay together
        splits = StratifiedKFold(n_splits=k).split(single, single)
        return [(fit, held) for fit, held in splits]


def _path_scores(clf: Any, index: int, x: np.ndarray, multi: np.ndarray,
                 folds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """The "ce" loss and top-1 of the ``index``-th C over every fold's held-out images, from the coefficients each
    fold's fit reached (``coefs_paths_``: (folds, l1 ratios, Cs, classes or 1, features + intercept))."""
    losses, hits = [], []
    for f, (_, held) in enumerate(folds):
        w = clf.coefs_paths_[f, 0, index]
        z = x[held] @ w[:, :-1].T + w[:, -1]
        if z.shape[1] == 1:  # two concepts: one logit for the second
            z = np.hstack([np.zeros_like(z), z])
        z = z - z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        full = np.zeros((len(held), multi.shape[1]))
        full[:, clf.classes_] = p
        loss, top1 = _scores(full, multi[held])
        losses.append(loss * len(held))
        hits.append(top1 * len(held))
    n = sum(len(h) for _, h in folds)
    loss = sum(losses) / n
    return (float(loss) if math.isfinite(loss) else math.inf), float(sum(hits) / n)


def _probabilities(clf: Any, x: np.ndarray, classes: int) -> np.ndarray:
    """(n, classes) probabilities: the concepts the fit never saw get none."""
    p = np.zeros((len(x), classes))
    p[:, clf.classes_] = clf.predict_proba(x)
    return p


def _scores(p: np.ndarray, multi: np.ndarray) -> tuple[float, float]:
    """The "ce" loss (soft targets spread evenly over an image's labels) and top-1 (the top concept is one of the
    image's labels) of probabilities ``p`` for these images."""
    target = multi / multi.sum(1, keepdims=True)
    loss = float(-(target * np.log(np.clip(p, 1e-15, 1.0))).sum(1).mean())
    top1 = float((multi[np.arange(len(p)), p.argmax(1)] > 0).mean())
    return loss, top1


def _set_classifier(run: Run, clf: Any) -> None:
    """Write the fitted regression into the network's linear classifier (softmax over every concept). A two-concept
    fit is one logit z: the two outputs are -z/2 and z/2, whose softmax is the same probability. A concept without
    training images gets zero weights and a bias far below every other."""
    linear = run.net.classifier
    assert isinstance(linear, torch.nn.Linear)  # fits_head: only a linear classifier is fitted
    classes = linear.out_features
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((classes, coef.shape[1]))
    bias = np.full(classes, float(intercept.min()) - 30.0)
    weight[clf.classes_], bias[clf.classes_] = coef, intercept
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight).to(linear.weight))
        linear.bias.copy_(torch.from_numpy(bias).to(linear.bias))


def _fmt_grid(values: list[float]) -> str:
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"


def _try(run: Run, lrate: float, fit_rows: np.ndarray, held_rows: np.ndarray, index: int,
         count: int) -> tuple[float, float]:
    """Train the head at ``lrate`` on ``fit_rows`` for the run's epochs; (loss, top-1) on ``held_rows``."""
    plan, mode, cb, net = run.plan, run.mode, run.cb, run.net
    params = {**plan.params, PARAM: lrate}
    items = run.items_per_epoch * len(fit_rows) // max(len(mode.train_rows), 1) or len(fit_rows)
    spe = tdata.steps_per_epoch(items, run.batch_size)
    schedule = make_schedule(plan.kind, plan.template, params, spe)
    opt = make_optimizer(plan.optimizer, params, net, frozen_backbone=True)
    net.train()
    step_no = 0
    for epoch in range(1, run.num_epochs + 1):
        if cb.should_stop():
            raise StopRequested()
        order = fit_rows[tdata.epoch_order(len(fit_rows), items, plan.seed + 1 + index, epoch)]
        for step, rows in tdata.batches(order, run.batch_size):
            set_lr(opt, float(schedule(step_no)))
            seed = tdata.step_seed(plan.seed + 1 + index, epoch, step)
            loss = mode.step(Batch(step, rows, None), torch.Generator().manual_seed(seed))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_no += 1
            if not math.isfinite(float(loss.detach())):
                return math.inf, 0.0
        cb.on_step({"epoch": 0, "step": index * run.num_epochs + epoch, "steps_per_epoch": count * run.num_epochs,
                    "loss": float("nan"), "lr": lrate, "images_per_sec": 0.0, "eta_s": 0.0, "phase": "tuning"})
    return _held_out(run, held_rows)


@torch.inference_mode()
def _held_out(run: Run, rows: np.ndarray) -> tuple[float, float]:
    """The mode's loss and top-1 on these training rows (features of the original images, no flips)."""
    mode = run.mode
    assert isinstance(mode, FeaturesMode)  # tuning_applies: only a frozen backbone's cached features are tried
    net = mode.net
    net.eval()
    try:
        f = run.rt.tensor(np.ascontiguousarray(mode.features["orig"][rows]))
        with run.rt.autocast():
            out = net.head_from_features(f).float()
        multi = run.rt.tensor(mode.multi_train[rows])
        single = run.rt.tensor(mode.single_train[rows])
        loss = float(mode.loss_fn(out, multi, single))
        top1 = float((multi.gather(1, out.argmax(1, keepdim=True)) > 0).float().mean())
    finally:
        net.train()
    return (loss if math.isfinite(loss) else math.inf), top1


def _trainable_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}


def _restore(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n in state:
                p.copy_(state[n])


@contextmanager
def _rng_kept() -> Iterator[None]:
    """torch's global random state as it was before the block: the real run draws what an untuned run draws."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)
