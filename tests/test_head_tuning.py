"""The head tunes itself on its cached features (``tune_head``): a softmax linear head fitted as a logistic regression
with its C cross-validated, other heads a rate from the grid; every candidate logged, within the template's bounds,
and a run without tuning untouched."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from core.templates import get_template
from core.training import Callbacks, train
from core.training.tuning import C_GRID, LRATE_GRID, MIN_VAL_ITEMS, validation_fold
from tests.training_support import manifest_dataset

LITE0 = ("classifier", "Studio_EfficientNetLite0_Transfer")


class Log(Callbacks):
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.phases: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def on_step(self, p: dict) -> None:
        self.phases.append(str(p.get("phase")))


@pytest.fixture
def slice_(tmp_path) -> dict:
    """Two concepts x 30 training + 5 validation real photos (enough for a 12-image held-out fold)."""
    return manifest_dataset(tmp_path, name="slice", n_train=30, n_val=5)


def _params(**over) -> dict:
    # small images and few epochs: the features of 70 photos and 4 x 6 head epochs take seconds
    return {"image_size": 64, "batch_size": 16, "num_epochs": 6, "base_gradient_multiplier": 0.0, **over}


def _train(run: Path, **params) -> tuple[dict, dict, Log]:
    log = Log()
    result = train({"dataset": "slice", "kind": LITE0[0], "template": LITE0[1], "params": _params(**params),
                    "seed": 3}, run, log)
    assert result.model_path is not None
    config = json.loads((Path(result.model_path) / "config.json").read_text())
    weights = load_file(str(Path(result.model_path) / "weights.safetensors"))
    return ({"metrics": result.metrics, "config": config, "id": result.model_id, "path": result.model_path}, weights,
            log)


def test_validation_fold_holds_out_a_share_of_every_label():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    fit, held = validation_fold(labels, seed=0)
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(labels)))
    assert [int((labels[held] == c).sum()) for c in range(4)] == [2, 1, 0, 1]  # a single item stays in fit
    assert np.array_equal(held, validation_fold(labels, seed=0)[1])  # a pure function of its seed
    assert not np.array_equal(held, validation_fold(labels, seed=1)[1])


def test_the_tuner_picks_a_rate_from_its_grid_and_logs_every_candidate(slice_, tmp_path):
    out, _, log = _train(tmp_path / "run", tune_head=True, logreg=1)  # a sigmoid head: its rate is tuned
    assert out["config"]["params"]["normalize_features"] == "no"
    tuned = out["config"]["head_tuning"]
    spec = get_template(*LITE0).param("lrate")
    assert tuned["grid"] == [v for v in LRATE_GRID if spec.min is None or v >= spec.min]
    assert tuned["chosen"] in tuned["grid"]
    assert out["metrics"]["tuned_lrate"] == tuned["chosen"]
    assert tuned["val_items"] >= MIN_VAL_ITEMS and tuned["fit_items"] + tuned["val_items"] == 60
    losses = {c["lrate"]: c["val_loss"] for c in tuned["candidates"]}
    assert list(losses) == tuned["grid"] and tuned["chosen"] == min(losses, key=losses.__getitem__)
    for rate in tuned["grid"]:
        assert any(line.startswith(f"head tuning: lrate {rate:g}: held-out loss") for line in log.lines), rate
    assert any(line.startswith("head tuned: lrate ") for line in log.lines)
    assert "tuning" in log.phases  # the job's progress shows the phase

    # the Models page says what the head chose, and shows every candidate
    from streamlit.testing.v1 import AppTest

    from core.evaluation import service
    from tests.conftest import ROOT

    text = service.head_tuning("local", out["id"])["text"]
    assert text.startswith(f"Head tuned: lrate {tuned['chosen']:g} of {{0.003, 0.01, 0.03, 0.1}}")
    at = AppTest.from_file(str(ROOT / "pages" / "4_Models.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    [details] = [e for e in at.expander if e.label.startswith("Head tuned")]
    assert details.label == text
    shown = details.dataframe[0].value
    assert shown["lrate"].tolist() == tuned["grid"] and shown["chosen"].sum() == 1


def test_a_tuned_run_trains_as_if_its_rate_had_been_set_by_hand(slice_, tmp_path):
    """The candidates leave no trace: the same initial head, the same batches and random draws."""
    tuned, w_tuned, _ = _train(tmp_path / "a", tune_head=True, logreg=1)
    chosen = tuned["config"]["head_tuning"]["chosen"]
    by_hand, w_hand, log = _train(tmp_path / "b", tune_head=False, lrate=chosen, logreg=1)
    assert by_hand["config"]["head_tuning"] is None and "tuned_lrate" not in by_hand["metrics"]
    assert not any("tuning" in line for line in log.lines)
    for k in w_hand:
        assert torch.equal(w_hand[k], w_tuned[k]), k


def test_tuning_does_not_apply_while_the_backbone_trains(tmp_path):
    manifest_dataset(tmp_path, name="slice")  # 2 x (2 + 1) photos: the whole network trains one short epoch
    out, _, log = _train(tmp_path / "run", tune_head=True, base_gradient_multiplier=0.1, num_epochs=1, image_size=32)
    assert out["config"]["head_tuning"] is None
    assert any("head tuning skipped: the backbone trains too" in line for line in log.lines)


def test_a_softmax_head_is_fitted_as_a_cross_validated_logistic_regression(slice_, tmp_path):
    """The defaults (softmax, frozen backbone, tune_head on): the head is the logistic regression on the
    power-normalised features at the C with the lowest cross-validated loss; the stored model predicts what
    scikit-learn's regression, fitted here to convergence on the stored model's own embeddings, predicts."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from core.data import service as data_service
    from core.evaluation import service
    from core.models.heads import SqrtL2Norm
    from core.models.io import load_model_dir

    out, _, log = _train(tmp_path / "run", num_epochs=30)
    config, tuned = out["config"], out["config"]["head_tuning"]
    assert config["params"]["normalize_features"] == "sqrt"  # "auto" resolved and recorded
    assert tuned["method"] == "logistic_regression" and tuned["param"] == "C" and tuned["grid"] == list(C_GRID)
    assert tuned["folds"] == 5 and tuned["fit_items"] == 60
    top1 = {c["C"]: c["val_top1"] for c in tuned["candidates"]}
    assert list(top1) == list(C_GRID) and all(math.isfinite(c["val_loss"]) for c in tuned["candidates"])
    loss = {c["C"]: c["val_loss"] for c in tuned["candidates"]}
    assert tuned["chosen"] == min(C_GRID, key=lambda c: (loss[c], c))  # the lowest loss, ties to the smaller C
    assert tuned["criterion"] == "val_loss"
    assert out["metrics"]["tuned_C"] == tuned["chosen"]
    for c in C_GRID:
        assert any(line.startswith(f"head fitting: C {c:g}: held-out loss") for line in log.lines), c
    assert any(line.startswith(f"head fitted: logistic regression, C {tuned['chosen']:g} of") for line in log.lines)
    assert tuned["features"] == "sqrt"
    assert any(line.startswith("head fitting: logistic regression on 60 images' power-normalised features (signed "
                               "square roots at unit length), C from") for line in log.lines)
    text = service.head_tuning("local", out["id"])["text"]
    assert text.startswith("Head fitted: logistic regression on power-normalised features (signed square roots at "
                           f"unit length), C {tuned['chosen']:g} of {{0.1, 1, 10, 100, 1000, 10000}}, the "
                           "lowest held-out loss in 5-fold cross-validation on 60 training images"), text
    assert "tuning" in log.phases and not any(p == "train" for p in log.phases)  # no SGD step
    assert out["metrics"]["epochs"] == 1  # the fit is the run's one epoch

    # the Models page: the sentence, and every C with its held-out figures
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    at = AppTest.from_file(str(ROOT / "pages" / "4_Models.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    [details] = [e for e in at.expander if e.label.startswith("Head fitted")]
    assert details.label == text
    shown = details.dataframe[0].value
    assert shown["C"].tolist() == list(C_GRID) and shown["chosen"].tolist() == [c == tuned["chosen"] for c in C_GRID]
    assert shown["held-out loss"].tolist() == [round(loss[c], 4) for c in C_GRID]

    model = load_model_dir(out["path"])
    assert isinstance(model.net.neck, SqrtL2Norm)
    records = data_service.dataset_records("local", "slice")
    train = [r for r in records if r["split"] == "train"]
    held = [r for r in records if r["split"] != "train"]
    images = lambda rs: [Image.open(r["path"]).convert("RGB") for r in rs]  # noqa: E731
    concepts = model.concepts
    x, y = model.embed(images(train)), np.array([concepts.index(r["labels"][0]) for r in train])
    # two concepts: scikit-learn fits one weight vector w = w1 - w0, penalised as ||w||^2 / 2; the softmax's two rows
    # are penalised each, and at their optimum w0 = -w1, so ||w0||^2 + ||w1||^2 = ||w||^2 / 2: the same at twice C
    reference = LogisticRegression(C=2 * tuned["chosen"], tol=1e-9, max_iter=10000).fit(x.astype(np.float64), y)
    mine = model.predict(images(held))
    theirs = reference.predict_proba(model.embed(images(held)).astype(np.float64))
    assert np.allclose(mine, theirs, atol=2e-3), (mine[:3], theirs[:3])

    # a model fitted before the choice was by the held-out loss records no criterion: its sentence stays as it was
    config_path = Path(out["path"]) / "config.json"
    stored = json.loads(config_path.read_text())
    del stored["head_tuning"]["criterion"]
    config_path.write_text(json.dumps(stored))
    assert ", the best held-out top-1 in 5-fold cross-validation on 60 training images" in service.head_tuning(
        "local", out["id"])["text"]


def test_tuning_off_keeps_the_raw_features_and_sgd(slice_, tmp_path):
    out, _, log = _train(tmp_path / "run", tune_head=False, num_epochs=2)
    assert out["config"]["params"]["normalize_features"] == "no" and out["config"]["head_tuning"] is None
    assert out["metrics"]["epochs"] == 2 and "tuned_C" not in out["metrics"]
    assert not any("head fit" in line for line in log.lines)


def test_a_model_stored_before_normalize_features_existed_keeps_its_raw_features():
    """No key: raw (stored before the parameter); "yes": unit length (stored before "sqrt"); the same weights."""
    from core.models.heads import L2Norm, SqrtL2Norm
    from core.models.networks import build_network

    params = {"image_size": 64, "pretrained_weights": "None", "tune_head": True}
    with torch.device("meta"):
        old = build_network(*LITE0, params, 3, load_weights=False)
        l2 = build_network(*LITE0, {**params, "normalize_features": "yes"}, 3, load_weights=False)
        new = build_network(*LITE0, {**params, "normalize_features": "sqrt"}, 3, load_weights=False)
    assert isinstance(old.neck, torch.nn.Identity) and type(l2.neck) is L2Norm and isinstance(new.neck, SqrtL2Norm)
    shapes = [{k: v.shape for k, v in n.state_dict().items()} for n in (old, l2, new)]
    assert shapes[0] == shapes[1] == shapes[2]


def test_the_sqrt_neck_is_the_unit_length_signed_square_root_with_a_finite_slope_at_zero():
    from core.models.heads import SqrtL2Norm

    x = torch.tensor([[4.0, 0.0, 1.0, 0.0], [0.0, -9.0, 16.0, 0.0]], requires_grad=True)
    y = SqrtL2Norm()(x)
    want = torch.tensor([[2.0, 0.0, 1.0, 0.0], [0.0, -3.0, 4.0, 0.0]])
    assert torch.allclose(y, want / want.norm(dim=1, keepdim=True), atol=1e-4)
    assert torch.allclose(y.norm(dim=1), torch.ones(2))
    y[:, :2].sum().backward()  # a channel that pooled to exactly 0 (as after ReLU6) must not poison a training backbone
    assert torch.isfinite(x.grad).all()


def _digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x[:n] / 16.0).astype(np.float32), y[:n]


@pytest.mark.parametrize("c", [1.0, 100.0, 10000.0])
def test_each_fit_is_scikit_learns_multinomial_regression_solved_to_convergence(c):
    """The solver's optimum at C is scikit-learn's ``LogisticRegression(C)`` solved far past its default tolerance (at
    which a weakly penalised fit stops early, wherever the tolerance is first met: the defect behind issue 26's last
    size), on 400 digits of ten classes."""
    from sklearn.linear_model import LogisticRegression

    from core.training import tuning

    x, y = _digits(400)
    target = torch.from_numpy(np.eye(10, dtype=np.float32)[y])
    params = tuning._solve(torch.from_numpy(x), target, c, None, lambda: False)
    fit = tuning.LogisticFit(params[:, :-1].numpy(), params[:, -1].double().numpy(), np.arange(10), c, [], 0)
    reference = LogisticRegression(C=c, tol=1e-10, max_iter=20000).fit(x.astype(np.float64), y)
    assert np.abs(fit.probabilities(x, 10) - reference.predict_proba(x)).max() < 2e-3
    early = LogisticRegression(C=c, max_iter=20000).fit(x.astype(np.float64), y)  # scikit-learn's tolerance, 1e-4
    if c == 10000.0:
        assert np.abs(early.predict_proba(x) - reference.predict_proba(x)).max() > 1e-2  # 5x the agreement above


def test_the_fitted_weights_give_the_regressions_probabilities_for_every_concept():
    """Written into a linear layer with one more output than the digits' ten classes (a concept without training
    images): softmax of the layer is the regression's probabilities, and the unseen concept gets none; the fit's
    held-out loss is the engine's "ce" loss of those logits, soft targets included."""
    from types import SimpleNamespace

    from core.training import tuning
    from core.training.losses import loss_fn

    x, y = _digits(400)
    multi = np.zeros((400, 11), dtype=np.float32)
    multi[np.arange(400), y] = 1.0
    steps: list[tuple[int, int]] = []
    fit = tuning.fit_logistic(x, multi, y, progress=lambda done, total: steps.append((done, total)))
    assert fit.folds == 5 and [c["C"] for c in fit.candidates] == list(C_GRID) and fit.C in C_GRID
    assert fit.C == min(fit.candidates, key=lambda r: (r["val_loss"], r["C"]))["C"]
    assert fit.classes.tolist() == list(range(10))
    total = 5 * len(C_GRID) + 1  # every fold's path and the final fit
    assert [d for d, _ in steps] == list(range(1, total + 1)) and {t for _, t in steps} == {total}
    linear = torch.nn.Linear(64, 11)
    tuning._set_classifier(SimpleNamespace(net=SimpleNamespace(classifier=linear)), fit)  # type: ignore[arg-type]
    with torch.no_grad():
        logits = linear(torch.from_numpy(x).float())
        p = torch.softmax(logits, 1).numpy()
    assert np.allclose(p, fit.probabilities(x, 11), atol=1e-5) and p[:, 10].max() < 1e-9
    multi[np.arange(20), (y[:20] + 1) % 10] = 1.0  # twenty images with a second label
    loss, top1 = tuning._scores(fit.probabilities(x, 11), multi)
    ce = float(loss_fn("ce", {})(logits, torch.from_numpy(multi), torch.zeros(400, dtype=torch.long)))
    assert abs(loss - ce) < 1e-4 and 0.9 < top1 <= 1.0


def test_a_cancel_stops_the_fit_at_the_solvers_next_step():
    from core.training.state import StopRequested
    from core.training.tuning import fit_logistic

    x, y = _digits(400)
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) > 30

    with pytest.raises(StopRequested):
        fit_logistic(x, np.eye(10)[y], y, should_stop=should_stop)
    assert len(polls) == 31


def test_images_with_two_labels_count_half_for_each_in_the_fitted_head(tmp_path):
    """Softmax with soft targets: an image labelled with both concepts is two rows of weight 1/2 in the fit; the stored
    model predicts what a regression fitted on those weighted rows of its own embeddings predicts."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    from core.data import service as data_service
    from core.data.importer import import_dataset
    from core.models.io import load_model_dir
    from tests.training_support import _photos, split_of

    src = tmp_path / "src"
    lines, seen = ["path,labels,split"], {}
    for rel, cls in _photos(src, 35):
        i = seen[cls] = seen.get(cls, -1) + 1
        labels = "accordion;anchor" if cls == "accordion" and i < 6 else cls  # six images of both
        lines.append(f"{rel},{labels},{split_of(i, 30)}")
    (src / "manifest.csv").write_text("\n".join(lines) + "\n")
    import_dataset("local", src / "manifest.csv", "slice", fmt="csv")
    out, _, _ = _train(tmp_path / "run", num_epochs=30)
    tuned = out["config"]["head_tuning"]
    assert tuned["method"] == "logistic_regression" and tuned["fit_items"] == 60

    model = load_model_dir(out["path"])
    train = data_service.dataset_records("local", "slice", "train")
    x = model.embed([Image.open(r["path"]).convert("RGB") for r in train]).astype(np.float64)
    rows = [(n, model.concepts.index(c), 1.0 / len(r["labels"])) for n, r in enumerate(train) for c in r["labels"]]
    assert sum(1 for _, _, w in rows if w == 0.5) == 12  # six images, two rows each
    img, label, weight = (np.array(v) for v in zip(*rows))
    reference = LogisticRegression(C=2 * tuned["chosen"], tol=1e-9, max_iter=10000)  # twice C: two concepts (above)
    reference.fit(x[img], label, sample_weight=weight)
    held = [r for r in data_service.dataset_records("local", "slice") if r["split"] != "train"]
    images = [Image.open(r["path"]).convert("RGB") for r in held]
    assert np.allclose(model.predict(images), reference.predict_proba(model.embed(images).astype(np.float64)),
                       atol=2e-3)


def test_too_few_images_to_cross_validate_fit_at_scikit_learns_default_c():
    """Nine of the digits (fewer than MIN_VAL_ITEMS): no folds, C 1, the log says why, and the head is scikit-learn's
    plain regression at C 1 on those rows."""
    from sklearn.linear_model import LogisticRegression

    from core.training.tuning import FALLBACK_C, fit_logistic

    x, y = _digits(400)
    keep = np.concatenate([np.flatnonzero(y == c)[:3] for c in (0, 1, 2)])
    x, y = x[keep], y[keep]
    lines: list[str] = []
    fit = fit_logistic(x, np.eye(3)[y], y, lines.append)
    assert (fit.C, fit.candidates, fit.folds) == (FALLBACK_C, [], 0)
    assert any("9 training images are too few to cross-validate" in line for line in lines), lines
    reference = LogisticRegression(C=FALLBACK_C, tol=1e-10, max_iter=10000).fit(x.astype(np.float64), y)
    assert np.abs(fit.probabilities(x, 3) - reference.predict_proba(x)).max() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_the_gpu_the_fit_is_the_cpus_within_rounding_with_tf32_allowed_around_it():
    """The run allows TF32 matmuls on CUDA (``training_device``); the fit turns them off while it solves, so it reaches
    the CPU's optimum, and leaves the run's setting as it found it."""
    from core.training.runtime import training_device
    from core.training.tuning import fit_logistic

    device = training_device()
    assert torch.backends.cuda.matmul.allow_tf32
    x, y = _digits(400)
    on_gpu = fit_logistic(x, np.eye(10)[y], y, device=device)
    on_cpu = fit_logistic(x, np.eye(10)[y], y)
    assert torch.backends.cuda.matmul.allow_tf32
    assert on_gpu.C == on_cpu.C
    assert np.abs(on_gpu.probabilities(x, 10) - on_cpu.probabilities(x, 10)).max() < 2e-3
