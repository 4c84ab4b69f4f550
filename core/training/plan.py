"""What a run is, decided before any heavy work: the validated request (``make_plan``) and the training options that
are not template parameters (``training_options``). Light: no torch, so pages and the job runner import it freely."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import paths
from core.errors import UserError
from core.models import GENERAL
from core.records import DatasetSummary
from core.templates.recipe import OptimizerSpec, flip_setting

# options.compile "auto" (the default): after this many steps the run estimates its remaining training time, and
# compiles the network's forward pass (torch.compile) when that is over AUTO_COMPILE_MIN_SECONDS. Compiling costs
# ~50-80 s on a 2-core CPU and pays 1.05-1.2x (bench/README.md, throughput), so only long runs gain; short runs and
# tests never compile. After as many compiled steps, it keeps the compiled forward only if its steps are faster.
# (core.training.compiling applies them; they live here because training_options explains "auto" with them.)
AUTO_COMPILE_PROBE_STEPS = 8
AUTO_COMPILE_MIN_SECONDS = 30 * 60


@dataclass
class Plan:
    """A validated training request: the template and its checked parameters, the dataset's records by split, the
    base model of a transfer classifier, and the loss, optimiser and flips the template declares."""

    owner: str
    kind: str
    template: str
    params: dict
    dataset: DatasetSummary
    concepts: list[str]
    train_records: list[dict]
    eval_records: list[dict]
    eval_split: str
    seed: int
    name: str | None
    run: str
    options: dict
    base_model: Mapping[str, Any] | None  # a ModelRow, or the general embedder's {"id": GENERAL, ...}
    loss: str  # "bce" | "ce" | "arcface" | "detector" (a template's "logreg" resolved by its logreg parameter)
    optimizer: OptimizerSpec
    flips: tuple[float, str]  # training flips: (probability, "horizontal" | "vertical")

    def config_identity(self) -> dict:
        """What must not change between a run and its resume (num_epochs may grow: that is extending)."""
        params = {k: v for k, v in self.params.items() if k != "num_epochs"}
        return {
            "owner": self.owner, "kind": self.kind, "template": self.template, "params": params,
            "dataset_id": self.dataset["id"], "dataset_version": self.dataset["version"], "seed": self.seed,
            "concepts": self.concepts,
            "base_model": self.base_model["id"] if self.base_model else None,
        }


def training_options(raw: dict | None) -> dict:
    """Training options that are not template parameters (the spec's bounds do not cover them)."""
    raw = dict(raw or {})
    patience = raw.pop("early_stopping_patience", None)
    patience = None if patience in (None, "", 0, "0") else int(patience)
    if patience is not None and patience < 1:
        raise UserError(f"early_stopping_patience: {patience} is not allowed; use an integer >= 1, or leave it unset")
    restore_best = bool(raw.pop("restore_best", patience is not None))
    compile_net = raw.pop("compile", None)
    if compile_net is None:
        compile_net = "auto"
    elif isinstance(compile_net, str):
        compile_net = {"true": True, "false": False}.get(compile_net.lower(), compile_net.lower())
    if not (isinstance(compile_net, bool) or compile_net == "auto"):
        raise UserError(f"compile: {compile_net!r} is not allowed; use true, false or \"auto\" (the default: "
                        f"compile when more than {AUTO_COMPILE_MIN_SECONDS // 60} minutes of training are left)")
    if raw:
        raise UserError(f"training options: unknown {sorted(raw)}; allowed: early_stopping_patience, restore_best, "
                        "compile")
    return {"early_stopping_patience": patience, "restore_best": restore_best, "compile": compile_net}


def resolve_loss(declared: str, params: dict) -> str:
    """The loss a template declares, for these parameters: "logreg" is binary cross-entropy (sigmoid units) when the
    logreg parameter is 1 and softmax cross-entropy when 0."""
    if declared == "logreg":
        return "bce" if int(params["logreg"]) == 1 else "ce"
    return declared


def backbone_frozen(params: dict) -> bool:
    """The template's backbone does not train (base_gradient_multiplier 0): its features or maps are cached."""
    return float(params.get("base_gradient_multiplier", 1.0)) == 0.0


def resolve_normalize(params: dict, loss: str, on_base: bool) -> str:
    """normalize_features "auto" for a run: "sqrt" when its head will be fitted as a logistic regression on cached
    features (``core.training.tuning.fits_head``: tune_head on, the backbone frozen, softmax), else "no". A transfer
    classifier on a base model normalises its base's embedding whatever this says, so it records "no"."""
    return "sqrt" if (params.get("tune_head") and backbone_frozen(params) and loss == "ce" and not on_base) else "no"


def make_plan(config: dict, run_dir: Path) -> Plan:
    """Validate the request and gather what the run needs; refusals are UserErrors naming the field."""
    from core.store import datasets as dstore
    from core.store import models as mstore
    from core.templates import get_template, validate
    from core.training.checkpoint import read_state

    for key in ("dataset", "kind", "template"):
        if not config.get(key):
            raise UserError(f"training configuration: {key!r} is required")
    owner = config.get("owner") or paths.DEFAULT_USER
    kind, template = str(config["kind"]), str(config["template"])
    params = validate(kind, template, dict(config.get("params") or {}))
    recipe = get_template(kind, template)
    dataset = dstore.get_dataset(owner, str(config["dataset"]))
    concepts = list(dstore.dataset_concepts(dataset["id"]))
    records = dstore.dataset_records(dataset["id"])
    split = dstore.eval_split(dataset["id"])
    train_records = [r for r in records if r["split"] == "train"]
    eval_records = [r for r in records if r["split"] == split]
    if not train_records:
        raise UserError(f"dataset {dataset['name']!r}: no images in the train split; set a train/validation split")
    if kind == "detector":
        if not any(r["boxes"] for r in train_records):
            raise UserError(f"dataset {dataset['name']!r}: no boxes in the train split; a detector needs images with "
                            "boxes (import a COCO JSON)")
    elif len(concepts) < 2:
        raise UserError(f"dataset {dataset['name']!r}: {len(concepts)} concept(s); a {kind} needs at least 2")
    seed = int(config.get("seed") or 0)
    name = config.get("name") or None
    if name is not None:
        name = str(name).strip()
        if not name:
            raise UserError("model name: must not be empty")
    base_model = None
    if config.get("base_model") not in (None, "", "none"):
        base_model = _resolve_base_model(owner, config["base_model"], kind, params)
    loss = resolve_loss(recipe.loss, params)
    if params.get("normalize_features") == "auto":
        params["normalize_features"] = resolve_normalize(params, loss, base_model is not None)
    plan = Plan(
        owner=owner, kind=kind, template=template, params=params, dataset=dataset, concepts=concepts,
        train_records=train_records, eval_records=eval_records, eval_split=split, seed=seed, name=name,
        run=str(config.get("run") or Path(run_dir).name), options=training_options(config.get("options")),
        base_model=base_model, loss=loss, optimizer=recipe.optimizer,
        flips=flip_setting(recipe.flips, params),
    )
    if name is not None and mstore.name_taken(owner, name):
        state = read_state(Path(run_dir) / "checkpoints")
        if not (state and state.get("model_name") == name):
            raise UserError(f"model name {name!r}: already used; choose another name")
    return plan


def _resolve_base_model(owner: str, ref: Any, kind: str, params: dict) -> Mapping[str, Any]:
    """A trained embedder (or the general one) as the frozen base of a transfer classifier."""
    from core.store import models as mstore

    if kind != "classifier" or "base_gradient_multiplier" not in params:
        raise UserError("base_model: only a transfer classifier template (one with base_gradient_multiplier) can be "
                        "trained on a base model")
    if str(ref) == GENERAL:
        return {"id": GENERAL, "name": GENERAL, "path": None, "kind": "embedder"}
    row = mstore.get_model(owner, ref)
    if row["kind"] != "embedder":
        raise UserError(f"base_model {ref!r}: is a {row['kind']}; choose a trained embedder or '{GENERAL}'")
    return row
