"""The Lite0 detector with its body frozen trains on the body's cached maps (``DetectorFeaturesMode``): a step and a
validation there compute what the whole detector computes on the images, and mirrored maps carry mirrored boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.training import Callbacks
from core.training.build import build_run
from core.training.modes import DetectorFeaturesMode
from core.training.modes.base import Batch
from core.training.plan import make_plan

TEMPLATE = "Studio_EfficientNetLite0_RetinaNet"


@pytest.fixture(scope="module")
def scenes_home(tmp_path_factory):
    """Eight composed scenes (two concepts, 320 px, real Caltech-101 photos on real backgrounds), imported once."""
    from core.data import scenes

    if not scenes.scenes_available():
        pytest.skip("Caltech-101 with BACKGROUND_Google not found")
    home = tmp_path_factory.mktemp("maps") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEEPTRAIN_HOME", str(home))
        scenes.import_scenes("local", "scenes", count=8, concepts=2, seed=3)
    return home


def _run(tmp_path, params: dict):
    config = {"dataset": "scenes", "kind": "detector", "template": TEMPLATE, "seed": 0,
              "params": {"image_size": 128, "batch_size": 4, "num_epochs": 1, **params}}
    plan = make_plan(config, tmp_path / "run")
    run = build_run(plan, tmp_path / "run", Callbacks())
    run.mode.prepare()
    return run


def test_a_step_and_a_validation_on_cached_maps_equal_the_whole_detectors(scenes_home, tmp_path, monkeypatch):
    from core.training.modes.detector import DetectorMode

    monkeypatch.setenv("DEEPTRAIN_HOME", str(scenes_home))
    run = _run(tmp_path, {"average_horizontal_flips": False})
    mode, net = run.mode, run.net
    assert isinstance(mode, DetectorFeaturesMode) and mode.maps is not None
    assert not any(p.requires_grad for p in net.backbone.body.parameters())  # the body is frozen...
    assert all(p.requires_grad for p in net.backbone.fpn.parameters())  # ...the pyramid learns with the head
    rows = np.arange(min(4, len(run.plan.train_records)))
    gen = torch.Generator().manual_seed(0)
    cached = float(mode.step(Batch(0, rows, None), gen).detach())
    u8 = torch.from_numpy(np.array(mode.pixels.cache.pixels[mode.pixels.train_rows[rows]]))
    whole = float(DetectorMode.step(mode, Batch(0, rows, u8), torch.Generator().manual_seed(0)).detach())
    assert cached == pytest.approx(whole, rel=1e-4)

    net.eval()
    with torch.inference_mode():
        from_maps = mode._evaluate()
        from_pixels = DetectorMode._evaluate(mode)
    assert from_maps["val_loss"] == pytest.approx(from_pixels["val_loss"], rel=1e-4)
    assert from_maps["map"] == pytest.approx(from_pixels["map"], abs=1e-6)


def test_mirrored_maps_carry_mirrored_boxes(scenes_home, tmp_path, monkeypatch):
    """With flips on, a mirrored image's maps are the body's maps of the mirrored image, and its boxes are the
    mirrored boxes (``hflip_target``, the function ``hflip`` uses)."""
    from core.models.detectors import hflip

    monkeypatch.setenv("DEEPTRAIN_HOME", str(scenes_home))
    run = _run(tmp_path, {"average_horizontal_flips": True})
    mode, net = run.mode, run.net
    assert "flip0" in mode.maps
    image = mode._image(0)
    target = mode.targets[0]
    resized, _ = net.transform([image])
    h, w = (int(v) for v in mode.sizes[0])
    mirrored_image, mirrored_target = hflip(resized.tensors[0, :, :h, :w], target)
    canvas = torch.zeros_like(resized.tensors)
    canvas[0, :, :h, :w] = mirrored_image
    with torch.inference_mode():
        direct = net.backbone.body(canvas)
    for k, stride in enumerate((8, 16, 32)):
        hp, wp = resized.tensors.shape[-2] // stride, resized.tensors.shape[-1] // stride
        assert torch.allclose(torch.from_numpy(np.array(mode.maps[f"flip{k}"][0, :, :hp, :wp])), direct[k][0],
                              atol=1e-4)
    maps, images = mode._gather(np.array([0]), [True])
    assert [tuple(m.shape[-2:]) for m in maps] == [(hp * s, wp * s) for s in (4, 2, 1)]  # strides 8, 16, 32
    assert images.image_sizes == [(h, w)]
    gen = torch.Generator().manual_seed(0)
    # a step that mirrors every image trains on exactly those boxes
    mode.flip_p = 1.0
    seen = {}
    original = net.losses_from_body
    monkeypatch.setattr(net, "losses_from_body", lambda m, i, t: (seen.setdefault("t", t), original(m, i, t))[1])
    mode.step(Batch(0, np.array([0]), None), gen)
    assert torch.equal(seen["t"][0]["boxes"], mirrored_target["boxes"])
    assert torch.equal(seen["t"][0]["labels"], target["labels"])


def test_a_moving_body_trains_the_whole_detector(scenes_home, tmp_path, monkeypatch):
    """base_gradient_multiplier above 0: no maps, the body learns at that fraction of the rate."""
    from core.training.modes import DetectorMode

    monkeypatch.setenv("DEEPTRAIN_HOME", str(scenes_home))
    run = _run(tmp_path, {"base_gradient_multiplier": 0.25})
    assert type(run.mode) is DetectorMode
    body = {id(p) for p in run.net.backbone.body.parameters() if p.requires_grad}
    mults = {g.get("lr_mult") for g in run.opt.param_groups if any(id(p) in body for p in g["params"])}
    assert body and mults == {0.25}


def test_maps_too_large_to_keep_train_the_frozen_body_at_every_step(scenes_home, tmp_path, monkeypatch):
    """Above the maps' size limit the run says so and runs the body at every step, still frozen: after training,
    its weights and batch-norm statistics (a random body has ordinary batch norms) are the ones it started with."""
    import core.training.modes.detector as detector_mode
    from core.models.io import load_model_dir
    from core.store import models as mstore
    from core.training import train

    class Log(Callbacks):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def log(self, line: str) -> None:
            self.lines.append(line)

    monkeypatch.setenv("DEEPTRAIN_HOME", str(scenes_home))
    monkeypatch.setattr(detector_mode, "MAX_MAPS_BYTES", 0)
    params = {"image_size": 128, "batch_size": 4, "num_epochs": 1, "pretrained_weights": "None"}
    torch.manual_seed(0)  # the run's seed: the body it builds
    start = {k: v.clone() for k, v in _run(tmp_path / "start", params).net.backbone.body.state_dict().items()}
    log = Log()
    result = train({"dataset": "scenes", "kind": "detector", "template": TEMPLATE, "seed": 0, "params": params},
                   tmp_path / "run", log)
    assert any("runs at every step instead" in line for line in log.lines), log.lines
    body = load_model_dir(mstore.get_model_by_id(result.model_id)["path"]).net.backbone.body.state_dict()
    assert body.keys() == start.keys()
    assert all(torch.equal(body[k], start[k]) for k in start)
