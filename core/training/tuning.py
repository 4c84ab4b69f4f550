"""The head tunes itself (``tune_head``): with a frozen backbone the features are cached, so the head can choose its
own settings before the real run.

- A classifier whose head is one linear layer with softmax (``fits_head``) is fitted, not stepped: a multinomial
  logistic regression on the features as the network's neck gives them (normalize_features: power-normalised by
  default), solved to convergence by torch's L-BFGS on the run's device (``fit_logistic``). Its L2 penalty C (as
  scikit-learn's) is chosen from ``C_GRID`` by the lowest held-out loss in k-fold cross-validation on the training
  split, then the head is fitted from zero on the whole split and written into the classifier. It is the plain probe a
  user would otherwise run beside the studio, on better-conditioned features and with converged fits; measured on
  Caltech-101 and Fashion-MNIST subsets, no SGD schedule of the head reached it at small sizes (bench/README.md, "The
  defaults at every size"). A cancel stops it at the solver's next step.
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
from dataclasses import dataclass
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
# The fitted head's penalties: scikit-learn's C (the inverse of the L2 penalty on the summed loss), decades from 0.1 to
# 1e4, chosen by the held-out loss of converged fits. Both halves matter: at scikit-learn's default tolerance (1e-4) a
# weakly penalised fit stops wherever the tolerance is first met, and the folds' fits at large C, each started from
# the one before, barely move (on the whole Caltech-101 train list their held-out figures at 10 and 30 were equal), so
# cross-validation measured the optimiser, not the penalty. Converged (FIT_TOL), test top-1 there rises with C up to
# 1e3 (0.9259, 0.9292, 0.9318 at 10, 100, 1e3; 0.9295 at 1e4), and so does the held-out loss's ranking, while the
# held-out top-1 of 6,096 images cannot tell 1e2 from 1e3 (0.9229 and 0.9216). Past 1e4 a fold's fit started from the
# one before no longer moves within the tolerance in float32 (bench/README.md, "The defaults at every size").
C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
FIT_TOL = 1e-6  # the solver stops when no entry of the objective's gradient exceeds this
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
    held-out images), "criterion": "val_loss", "folds", "fit_items", "val_items", "train_loss", "seconds",
    "features"}`` (features: the resolved normalize_features).
    """
    mode, cb = run.mode, run.cb
    t0 = time.perf_counter()
    rows = mode.train_rows
    x = _neck_features(run, rows)
    multi = mode.multi_train[rows]
    features = str(run.plan.params.get("normalize_features", "no"))

    def progress(done: int, total: int) -> None:
        cb.on_step({"epoch": 0, "step": done, "steps_per_epoch": total, "loss": float("nan"), "lr": 0.0,
                    "images_per_sec": 0.0, "eta_s": 0.0, "phase": "tuning"})

    progress(0, 1)
    fit = fit_logistic(x, multi, mode.single_train[rows], cb.log, cb.should_stop,
                       f"{len(rows)} images' {FEATURES_TEXT.get(features, 'features')}", run.rt.device, progress)
    train_loss, _ = _scores(fit.probabilities(x, multi.shape[1]), multi)
    _set_classifier(run, fit)
    seconds = time.perf_counter() - t0
    cb.log(f"head fitted: logistic regression, C {fit.C:g} of {_fmt_grid(list(C_GRID))}, training loss "
           f"{train_loss:.4f} ({seconds:.1f} s)")
    return {"method": LOGISTIC, "param": "C", "chosen": fit.C, "grid": list(C_GRID), "candidates": fit.candidates,
            "criterion": "val_loss", "folds": fit.folds, "fit_items": int(len(rows)),
            "val_items": int(len(rows)) if fit.folds else 0, "train_loss": round(float(train_loss), 6),
            "seconds": round(seconds, 3), "features": features}


@dataclass(frozen=True)
class LogisticFit:
    """A multinomial logistic regression over the concepts ``classes`` (columns of the label matrix: those with
    training images), its penalty ``C``, each candidate's cross-validated figures and the number of folds (0: too few
    images to cross-validate)."""

    weight: np.ndarray  # (len(classes), features)
    bias: np.ndarray  # (len(classes),)
    classes: np.ndarray
    C: float
    candidates: list[dict[str, Any]]
    folds: int

    def probabilities(self, x: np.ndarray, concepts: int) -> np.ndarray:
        """(n, concepts) softmax probabilities of rows ``x``; a concept without training images gets none."""
        z = x.astype(np.float64) @ self.weight.T.astype(np.float64) + self.bias
        z -= z.max(1, keepdims=True)
        p = np.zeros((len(x), concepts))
        p[:, self.classes] = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return p


def fit_logistic(x: np.ndarray, multi: np.ndarray, single: np.ndarray, log: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, what: str = "features",
                 device: torch.device | str = "cpu",
                 progress: Callable[[int, int], None] | None = None) -> LogisticFit:
    """A multinomial logistic regression on rows ``x`` (n, d) with labels ``multi`` (n, concepts; 0/1) and one label
    per image ``single`` (n,) to stratify the folds by: C chosen from ``C_GRID`` by the lowest held-out loss in k-fold
    cross-validation (each fold's fits in increasing C, each from the one before; ties to the smaller C), then fitted
    from zero on every image. Every fit is solved to convergence (``_solve``) on ``device``.

    The targets are the "ce" loss's: an image with k labels counts 1/k for each. ``progress(done, total)`` after each
    fit; ``should_stop`` is polled at every step of the solver (StopRequested).
    """
    log = log or (lambda line: None)
    stop = should_stop or (lambda: False)
    classes = np.flatnonzero(multi.sum(0) > 0)
    seen = multi[:, classes].astype(np.float64)
    xs = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)
    target = torch.as_tensor(seen / seen.sum(1, keepdims=True), dtype=torch.float32, device=device)
    folds = _folds(single)
    total, done = len(folds) * len(C_GRID) + 1, 0
    candidates: list[dict[str, Any]] = []
    with _full_precision():
        if folds:
            log(f"head fitting: logistic regression on {what}, C from {_fmt_grid(list(C_GRID))} by {len(folds)}-fold "
                "cross-validation (lowest held-out loss); lrate, batch_size and num_epochs are not used")
            loss_sum, hits = np.zeros(len(C_GRID)), np.zeros(len(C_GRID))
            for fit_rows, held in folds:
                params = None
                fit_t, held_t = torch.as_tensor(fit_rows, device=device), torch.as_tensor(held, device=device)
                for i, c in enumerate(C_GRID):
                    params = _solve(xs[fit_t], target[fit_t], c, params, stop)
                    logp = torch.log_softmax(_logits(params, xs[held_t]), 1)
                    loss_sum[i] += float(-(target[held_t] * logp).sum())
                    top = classes[logp.argmax(1).cpu().numpy()]
                    hits[i] += float((multi[held, top] > 0).sum())
                    done += 1
                    if progress is not None:
                        progress(done, total)
            n = sum(len(held) for _, held in folds)
            for i, c in enumerate(C_GRID):
                loss = loss_sum[i] / n
                candidates.append({"C": c, "val_loss": float(loss) if math.isfinite(loss) else math.inf,
                                   "val_top1": float(hits[i] / n)})
                log(f"head fitting: C {c:g}: held-out loss {loss:.4f}, top-1 {hits[i] / n:.4f}")
            chosen = min(candidates, key=lambda r: (r["val_loss"], r["C"]))["C"]  # ties to the stronger penalty
        else:
            chosen = FALLBACK_C
            log(f"head fitting: {len(x)} training images are too few to cross-validate (at least {MIN_VAL_ITEMS} "
                f"needed); C {chosen:g}, scikit-learn's default")
        params = _solve(xs, target, chosen, None, stop).cpu()
    if progress is not None:
        progress(total, total)
    return LogisticFit(weight=params[:, :-1].numpy().astype(np.float32), bias=params[:, -1].numpy().astype(np.float64),
                       classes=classes, C=float(chosen), candidates=candidates, folds=len(folds))


def _solve(x: torch.Tensor, target: torch.Tensor, C: float, start: torch.Tensor | None,
           should_stop: Callable[[], bool]) -> torch.Tensor:
    """(concepts, d + 1) weights and biases minimising the mean cross-entropy of softmax(x W^T + b) against the soft
    ``target`` plus ||W||^2 / (2 C n): scikit-learn's multinomial ``LogisticRegression(C)`` (penalty on the weights,
    not the biases), solved by torch's L-BFGS with a strong-Wolfe line search until no gradient entry exceeds
    ``FIT_TOL``, from ``start`` (zeros when None)."""
    n, d = x.shape
    params = (torch.zeros(target.shape[1], d + 1, device=x.device) if start is None else start.clone())
    params.requires_grad_(True)
    penalty = 0.5 / (C * n)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=FIT_MAX_ITER, tolerance_grad=FIT_TOL, tolerance_change=1e-12,
                            history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        if should_stop():
            raise StopRequested()
        opt.zero_grad()
        loss = -(target * torch.log_softmax(_logits(params, x), 1)).sum(1).mean()
        loss = loss + penalty * params[:, :-1].pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return params.detach()


def _logits(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x @ params[:, :-1].T + params[:, -1]


@contextmanager
def _full_precision() -> Iterator[None]:
    """float32 matmuls at full precision on CUDA (the run allows TF32, whose 10-bit mantissa is too coarse for the
    solver's gradient tolerance)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


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


def _scores(p: np.ndarray, multi: np.ndarray) -> tuple[float, float]:
    """The "ce" loss (soft targets spread evenly over an image's labels) and top-1 (the top concept is one of the
    image's labels) of probabilities ``p`` for these images."""
    target = multi / multi.sum(1, keepdims=True)
    loss = float(-(target * np.log(np.clip(p, 1e-15, 1.0))).sum(1).mean())
    top1 = float((multi[np.arange(len(p)), p.argmax(1)] > 0).mean())
    return loss, top1


def _set_classifier(run: Run, fit: LogisticFit) -> None:
    """Write the fitted regression into the network's linear classifier (softmax over every concept). A concept
    without training images gets zero weights and a bias far below every other."""
    linear = run.net.classifier
    assert isinstance(linear, torch.nn.Linear)  # fits_head: only a linear classifier is fitted
    weight = np.zeros((linear.out_features, fit.weight.shape[1]))
    bias = np.full(linear.out_features, float(fit.bias.min()) - 30.0)
    weight[fit.classes], bias[fit.classes] = fit.weight, fit.bias
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
