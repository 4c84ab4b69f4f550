"""The training engine on tiny real data: every template trains and loads, schedules, resume, checkpoints, NaN, CLI."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core.errors import UserError
from core.store import models as mstore
from core.templates import get_template, list_templates
from core.training import Callbacks, train
from core.training.checkpoint import LAST, load_checkpoint, read_state, save_checkpoint
from tests.training_support import coco_dataset, manifest_dataset, tiny_params

LITE0 = ("classifier", "Studio_EfficientNetLite0_Transfer")


class Recorder(Callbacks):
    """Keeps every step and epoch; asks to stop after ``stop_after`` steps when given."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.steps: list[dict] = []
        self.epochs: list[tuple[int, dict]] = []
        self.stop_after = stop_after
        self.started: dict | None = None
        self.logs: list[str] = []

    def log(self, line: str) -> None:
        self.logs.append(line)

    def on_start(self, info: dict) -> None:
        self.started = info

    def on_step(self, p: dict) -> None:
        if p.get("phase") == "train":
            self.steps.append(p)

    def on_epoch(self, epoch: int, metrics: dict) -> None:
        self.epochs.append((epoch, metrics))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after


def _config(kind: str, template: str, params: dict, dataset: str = "tiny", **extra) -> dict:
    return {"dataset": dataset, "kind": kind, "template": template, "params": params, "seed": 0, **extra}


@pytest.fixture
def tiny(tmp_path) -> dict:
    return manifest_dataset(tmp_path)


def _one_image(kind: str) -> Image.Image:
    from tests.training_support import CALTECH

    return Image.open(sorted((CALTECH / "ant").iterdir())[0]).convert("RGB")


@pytest.mark.parametrize("template", list_templates(), ids=lambda t: f"{t.kind}-{t.name}")
def test_every_template_trains_two_steps_and_loads(template, tmp_path, monkeypatch):
    from core.models.io import load_model_dir

    if template.kind == "detector":
        coco_dataset(tmp_path, name="tiny")
    else:
        manifest_dataset(tmp_path)
    params = tiny_params(template)
    rec = Recorder()
    clipped: list[float] = []  # detectors clip their gradients' norm before every step; the others do not clip
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda ps, max_norm, **kw: (clipped.append(max_norm),
                                                                                        clip(ps, max_norm, **kw))[1])
    result = train(_config(template.kind, template.name, params), tmp_path / "run", rec)
    assert clipped == ([10.0, 10.0] if template.kind == "detector" else [])

    assert not result.stopped and result.model_id is not None
    assert len(rec.steps) == 2 and rec.steps[-1]["step"] == 2
    assert all(math.isfinite(s["loss"]) for s in rec.steps)
    row = mstore.get_model_by_id(result.model_id)
    assert row["kind"] == template.kind and row["template"] == template.name
    assert row["concepts"] == ["accordion", "anchor"] and row["dataset_version"] >= 1
    assert row["params"]["image_size"] == params["image_size"] and row["train_seconds"] > 0
    epochs = mstore.get_epoch_metrics(row["run"])
    assert [e["epoch"] for e in epochs] == [1]
    for key in ("train_loss", "lr", "images_per_sec", "epoch_seconds"):
        assert key in epochs[0]
    if template.kind == "classifier":
        assert 0 <= epochs[0]["top1"] <= epochs[0]["top5"] <= 1 and "val_loss" in epochs[0]
    if template.kind == "embedder":
        assert 0 <= epochs[0]["recall_at_1"] <= 1 and 0 <= epochs[0]["map"] <= 1
    if template.kind == "detector":
        assert math.isfinite(epochs[0]["val_loss"])
    assert (Path(row["path"]) / "metrics.csv").is_file()

    model = load_model_dir(row["path"])
    out = model.predict([_one_image(template.kind)])
    if template.kind == "detector":
        assert isinstance(out, list) and len(out) == 1
    else:
        assert out.shape == (1, 2) and np.isfinite(out).all()
        emb = model.embed([_one_image(template.kind)])
        assert emb.shape == (1, model.embedding_dim)
    if template.kind == "embedder":
        # the embedding is a layer the training changes (with the template's default freezing): the same network
        # built again from the run's seed embeds the photo differently from the trained one
        from core.models import build_network
        from core.templates import validate

        torch.manual_seed(0)  # the run's seed, as build_run seeds the network it builds
        start = build_network(template.kind, template.name, validate(template.kind, template.name, params), 2).eval()
        with torch.no_grad():
            before = torch.nn.functional.normalize(start.embed(torch.from_numpy(np.stack(
                [model.transform(_one_image(template.kind)).numpy()]))), dim=1).numpy()
        assert not np.allclose(before, emb, atol=1e-4), "training left the embedding as it was"


def test_step_schedule_applied_per_step(tmp_path):
    """Clarifai step schedule: base rate for init_epochs, then x step_factor every step_epochs (1 step per epoch)."""
    manifest_dataset(tmp_path)
    template = get_template("classifier", "Clarifai_InceptionV2")
    params = tiny_params(template, num_epochs=4, num_items_per_epoch=2, init_epochs=1, step_epochs=2,
                         per_item_lrate=1e-4)
    rec = Recorder()
    train(_config("classifier", template.name, params), tmp_path / "run", rec)
    factor = get_template("classifier", template.name)
    step_factor = next(p.default for p in factor.params if p.name == "step_factor")
    base = 2 * 1e-4
    expected = [base, base * step_factor, base * step_factor, base * step_factor**2]
    assert [s["lr"] for s in rec.steps] == pytest.approx(expected, rel=1e-9)


def test_rsb_cosine_warmup_and_adamw(tmp_path):
    """RSB-A1: linear warmup from warmup_ratio x lrate, cosine to batch_size x per_item_min_lrate; AdamW without
    decay on norms and biases."""
    manifest_dataset(tmp_path)
    name = "MMClassification_ResNet_50_RSB_A1"
    params = tiny_params(get_template("classifier", name), num_epochs=3, warmup_iters=2, warmup_ratio=0.1,
                         per_item_lrate=1e-4, per_item_min_lrate=1e-6, batch_size=4)
    rec = Recorder()
    train(_config("classifier", name, params), tmp_path / "run", rec)
    base, low, total = 4 * 1e-4, 4 * 1e-6, 3
    expected = []
    for step in range(total):
        lr = low + (base - low) * 0.5 * (1 + math.cos(math.pi * step / total))
        if step < 2:
            lr *= 1 - (1 - step / 2) * (1 - 0.1)
        expected.append(lr)
    assert [s["lr"] for s in rec.steps] == pytest.approx(expected, rel=1e-9)
    state = read_state(tmp_path / "run" / "checkpoints")
    groups = state["optimizer"]["param_groups"]
    assert {g["weight_decay"] for g in groups} == {0.0, params.get("weight_decay", 0.01)}
    assert all("betas" in g for g in groups)  # AdamW


@pytest.fixture
def on_cpu(monkeypatch):
    """Train on the CPU even where a GPU is present: for what these tests check only the CPU does (bitwise equal
    resumes, thread counts, inductor's C++ compiler)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _weights(path: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(path) / "weights.safetensors"))


def _stop_then_resume(tmp_path) -> tuple[dict, dict]:
    """The same run twice: uninterrupted, and stopped mid-epoch 2 then resumed; both models' weights. At 128 px, where
    the CPU trains in channels_last too: the optimiser's momentum must come back with its parameter's strides."""
    manifest_dataset(tmp_path)
    kind, name = LITE0
    params = tiny_params(get_template(kind, name), num_epochs=2, num_items_per_epoch=4, base_gradient_multiplier=0.5,
                         lrate=0.001, image_size=128)
    whole = train(_config(kind, name, params, name="whole"), tmp_path / "whole")

    rec = Recorder(stop_after=3)
    first = train(_config(kind, name, params, name="parts"), tmp_path / "parts", rec)
    assert first.stopped and first.model_id is None and first.epochs_done == 1
    state = read_state(tmp_path / "parts" / "checkpoints")
    assert state["epoch_done"] == 1 and state["step_in_epoch"] == 1
    second = train(_config(kind, name, params, name="parts"), tmp_path / "parts", Recorder(), resume=True)
    assert second.model_id is not None and second.epochs_done == 2
    a, b = _weights(whole.model_path), _weights(second.model_path)
    assert a.keys() == b.keys()
    run = mstore.get_model_by_id(second.model_id)["run"]
    assert [e["epoch"] for e in mstore.get_epoch_metrics(run)] == [1, 2]
    return a, b


def test_resume_after_stop_gives_the_same_weights(tmp_path, on_cpu):
    """Stopped mid-epoch then resumed == uninterrupted, bit for bit, on the CPU with a fixed seed (full network)."""
    a, b = _stop_then_resume(tmp_path)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_resume_on_the_gpu_gives_the_same_weights_within_rounding(tmp_path):
    """On CUDA (bf16 autocast, cuDNN choosing its algorithms per run) a resumed run restarts from the same weights,
    optimiser state and random streams, but its kernels may sum in another order: equal within rounding, not bitwise."""
    a, b = _stop_then_resume(tmp_path)
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-2, atol=1e-3, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def test_extend_a_finished_run_equals_a_longer_run(tmp_path, tiny):
    kind, name = LITE0
    params = tiny_params(get_template(kind, name), num_epochs=3)
    longer = train(_config(kind, name, params, name="longer"), tmp_path / "longer")
    short = train(_config(kind, name, dict(params, num_epochs=2), name="short"), tmp_path / "short")
    again = train(_config(kind, name, dict(params, num_epochs=2), name="short"), tmp_path / "short", resume=True)
    assert again.model_id == short.model_id  # resuming a finished run registers nothing new
    extended = train(_config(kind, name, params, name="short"), tmp_path / "short", resume=True)
    assert extended.model_id != short.model_id and extended.epochs_done == 3
    assert mstore.get_model_by_id(extended.model_id)["name"] == "short-2"
    a, b = _weights(longer.model_path), _weights(extended.model_path)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_configuration(tmp_path, tiny):
    kind, name = LITE0
    params = tiny_params(get_template(kind, name))
    train(_config(kind, name, params), tmp_path / "run", Recorder(stop_after=1))
    with pytest.raises(UserError, match="configuration differs"):
        train(_config(kind, name, dict(params, lrate=0.5)), tmp_path / "run", resume=True)


def test_checkpoint_survives_a_kill_between_write_and_rename(tmp_path, monkeypatch):
    """A crash after the temporary files are written but before the rename keeps the old checkpoint loadable."""
    ckpt = tmp_path / "ckpt"
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(ckpt, net, opt, {"epoch_done": 1, "step_in_epoch": 0})
    good = {k: v.clone() for k, v in net.state_dict().items()}

    with torch.no_grad():
        net.weight.add_(1.0)
    real_replace = os.replace

    def killed(src, dst):
        if str(dst).endswith(LAST):
            raise KeyboardInterrupt("killed between write and rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ckpt, net, opt, {"epoch_done": 2, "step_in_epoch": 0})
    monkeypatch.setattr(os, "replace", real_replace)
    assert any(".tmp-" in f.name for f in ckpt.iterdir())  # the leftover temporary JSON

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    state = load_checkpoint(ckpt, fresh, fresh_opt)
    assert state["epoch_done"] == 1
    assert all(torch.equal(fresh.state_dict()[k], good[k]) for k in good)
    assert "momentum_buffer" in fresh_opt.state[fresh.weight]
    save_checkpoint(ckpt, fresh, fresh_opt, {"epoch_done": 2, "step_in_epoch": 0})
    assert not any(".tmp-" in f.name for f in ckpt.iterdir())  # cleaned by the next save
    assert len(list(ckpt.glob("*.safetensors"))) == 1


def test_resume_after_a_crashed_save_uses_the_previous_epoch(tmp_path, tiny):
    kind, name = LITE0
    params = tiny_params(get_template(kind, name), num_epochs=1)
    train(_config(kind, name, params), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints"
    (ckpt / "ckpt-00002-000000.safetensors.tmp-4242").write_bytes(b"half a file")
    (ckpt / f"{LAST}.tmp-4242").write_text('{"epoch_done": 2, "fi')
    result = train(_config(kind, name, dict(params, num_epochs=2), name="extended"), tmp_path / "run", resume=True)
    assert result.epochs_done == 2
    assert not any(".tmp-" in f.name for f in ckpt.iterdir())


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, tiny):
    kind, name = LITE0
    params = tiny_params(get_template(kind, name), num_epochs=3, lrate=1e30)
    with pytest.raises(UserError, match="not a finite number.*learning rate"):
        train(_config(kind, name, params), tmp_path / "run")
    assert mstore.list_models() == []


def test_early_stopping_and_best_checkpoint(tmp_path, tiny):
    kind, name = LITE0
    params = tiny_params(get_template(kind, name), num_epochs=6, lrate=0.0)
    rec = Recorder()
    result = train(_config(kind, name, params, options={"early_stopping_patience": 2}), tmp_path / "run", rec)
    assert result.epochs_done == 3 and len(rec.epochs) == 3  # epoch 1 best, 2 and 3 no better: stop
    best = read_state(tmp_path / "run" / "checkpoints", "best.json")
    assert best["epoch_done"] == 1 and result.metrics["epoch"] == 1
    with pytest.raises(UserError, match="early_stopping_patience"):
        train(_config(kind, name, params, options={"early_stopping_patience": -1}), tmp_path / "run2")


def test_stop_request_returns_stopped(tmp_path, tiny):
    kind, name = LITE0
    result = train(_config(kind, name, tiny_params(get_template(kind, name))), tmp_path / "run", Recorder(0))
    assert result.stopped and result.model_id is None


def test_frozen_backbone_head_steps_run_on_one_cpu_thread_and_restore_the_count(tmp_path, tiny, on_cpu):
    """Tiny head matmuls on one thread (no OpenMP barrier to collapse under load); the backbone pass uses all."""
    kind, name = LITE0
    seen: list[int] = []

    class Threads(Recorder):
        def on_step(self, p: dict) -> None:
            seen.append((p.get("phase"), torch.get_num_threads()))

    params = tiny_params(get_template(kind, name), base_gradient_multiplier=0.0)
    train(_config(kind, name, params), tmp_path / "run", Threads())
    assert {n for phase, n in seen if phase == "train"} == {1}
    assert torch.get_num_threads() == (os.cpu_count() or 1)  # all cores again for whatever runs next


def test_compile_policy_compiles_a_small_network_with_inductor_and_keeps_its_parameters(monkeypatch):
    """The auto policy on the smallest network that shows it, compiled for real (inductor's C++ on the CPU): two eager
    probe steps, the step that compiles (its time kept out of the step times), two timed compiled steps and the
    verdict; the compiled forward computes what the eager one does, with the same parameters."""
    from torch import nn

    from core.training import compiling

    monkeypatch.setattr(compiling, "AUTO_COMPILE_PROBE_STEPS", 2)
    monkeypatch.setattr(compiling, "AUTO_COMPILE_MIN_SECONDS", 0.0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 2))
    logs: list[str] = []
    policy = compiling.CompilePolicy(net, batch_size=4, option="auto", log=logs.append)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    times: list[float] = []
    torch._dynamo.reset()
    for _ in range(5):
        snapshot = policy.snapshot()

        def step() -> torch.Tensor:
            return nn.functional.cross_entropy(policy.forward(x), y)

        loss = policy.backward(step(), snapshot, lambda: opt.zero_grad(set_to_none=True), step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert math.isfinite(loss.item())
        # the step times are the test's: compiled steps twice as fast as eager ones, so the verdict is "kept"
        policy.after_step(steps_left=100, step_times=times, seconds=0.01 if policy.used_compiled else 0.02)
    assert logs[0].startswith("compiling the network's forward pass (auto: ")
    assert logs[1:] == ["compiled steps take 0.010 s against 0.020 s eager (2.00x): kept"], logs
    assert times == [0.02, 0.02, 0.01, 0.01]  # 5 steps, the one that compiled not among them
    assert policy.compiled is not None and policy.used_compiled
    with torch.no_grad():  # the compiled forward reads the parameters the optimiser moved
        torch.testing.assert_close(policy.compiled(x), net(x), rtol=1e-4, atol=1e-5)


def test_auto_compile_compiles_when_the_probe_steps_leave_enough_time(tmp_path, tiny, monkeypatch):
    """options.compile "auto" (the default) in a real training run: after the probe steps, a run with enough time left
    compiles its forward and goes on with the same parameters; the stored model loads and predicts. Compiled with the
    aot_eager backend (Dynamo's graph capture and AOT autograd, no code generation): inductor's C++ for the whole
    network took over a minute of the suite, and the test above compiles with inductor on a small network."""
    import functools

    from core.models.io import load_model_dir
    from core.training import compiling

    monkeypatch.setattr(compiling, "AUTO_COMPILE_PROBE_STEPS", 2)
    monkeypatch.setattr(compiling, "AUTO_COMPILE_MIN_SECONDS", 0.0)  # any time left is enough
    monkeypatch.setattr(compiling.torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    kind, name = LITE0
    params = tiny_params(get_template(kind, name), base_gradient_multiplier=1.0, num_items_per_epoch=14)
    rec = Recorder()
    result = train(_config(kind, name, params), tmp_path / "run", rec)
    assert [line for line in rec.logs if line.startswith("compiling")] == [
        "compiling the network's forward pass (auto: about 0 min of training left); the next step waits for it"]
    # 2 eager probe steps, the compiling step, 2 timed compiled steps: the verdict, whichever it is
    [verdict] = [line for line in rec.logs if line.startswith("compiled steps take")]
    assert verdict.endswith(": kept") or verdict.endswith("training goes on without compiling")
    assert len(rec.steps) == 7 and all(math.isfinite(s["loss"]) for s in rec.steps)
    # the third step compiled (seconds, not milliseconds): its time stays out of images/s and the ETA
    assert rec.steps[2]["images_per_sec"] == rec.steps[1]["images_per_sec"]
    probs = load_model_dir(mstore.get_model_by_id(result.model_id)["path"]).predict([_one_image(kind)])
    assert probs.shape == (1, 2) and np.isfinite(probs).all()


def test_auto_compile_leaves_short_runs_eager(tmp_path, tiny):
    kind, name = LITE0
    params = tiny_params(get_template(kind, name), base_gradient_multiplier=1.0, num_items_per_epoch=20)
    rec = Recorder()
    train(_config(kind, name, params), tmp_path / "run", rec)
    assert len(rec.steps) == 10 and not any(line.startswith("compiling") for line in rec.logs)


def test_compile_that_fails_falls_back_to_eager_training(tmp_path, tiny, monkeypatch, capsys, on_cpu):
    """CLI --compile with no working C++ compiler (inductor's compiler pointed at a missing file): the run logs why and
    trains on without compiling."""
    import torch._inductor.config as inductor_config

    from core.cli import main

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # no compiled graph from an earlier test...
    torch._dynamo.reset()  # ...on disk or in this process's caches
    kind, name = LITE0
    params = tiny_params(get_template(kind, name), base_gradient_multiplier=1.0, num_items_per_epoch=4)
    argv = ["train", "--dataset", "tiny", "--kind", kind, "--template", name, "--compile", "--foreground"]
    for key, value in params.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "compiling the network's forward pass (options.compile)" in err
    assert "compiling failed (" in err and "training goes on without it" in err


def test_a_compiled_backward_that_fails_redoes_the_step_eagerly(tmp_path, tiny, monkeypatch):
    """The backward's graph compiles at the first backward() (on a GPU: Triton kernels), after the forward succeeded:
    a failure there gives up compiling and redoes that step eagerly; the run ends as an eager run would."""
    from core.training import compiling

    class FailingBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("ptxas fatal: a compiler failure in the backward graph")

    class Compiled(torch.nn.Module):  # stands for torch.compile(net): the same parameters, a failing backward
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return FailingBackward.apply(self.net(x))

    monkeypatch.setattr(compiling.torch, "compile", Compiled)
    kind, name = LITE0
    params = tiny_params(get_template(kind, name), base_gradient_multiplier=1.0, num_items_per_epoch=4)
    eager = train(_config(kind, name, params, name="eager", options={"compile": False}), tmp_path / "eager")
    rec = Recorder()
    failed = train(_config(kind, name, params, name="failed", options={"compile": True}), tmp_path / "failed", rec)
    assert any("compiling failed (RuntimeError: ptxas fatal" in line for line in rec.logs)
    a, b = _weights(eager.model_path), _weights(failed.model_path)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_compile_option_values():
    from core.training.plan import training_options

    assert training_options({})["compile"] == "auto"
    assert training_options({"compile": True})["compile"] is True
    assert training_options({"compile": "False"})["compile"] is False
    assert training_options({"compile": "AUTO"})["compile"] == "auto"
    for bad in (1, "yes", 0.5, [True]):
        with pytest.raises(UserError, match="compile: .* is not allowed; use true, false or \"auto\""):
            training_options({"compile": bad})


def test_refusals(tmp_path, tiny):
    kind, name = LITE0
    with pytest.raises(UserError, match="batch_size"):
        train(_config(kind, name, {"batch_size": 0}), tmp_path / "a")
    with pytest.raises(UserError, match="nope"):
        train(_config(kind, name, {}, dataset="nope"), tmp_path / "b")
    with pytest.raises(UserError, match="no boxes"):
        train(_config("detector", "Studio_RetinaNet", {}), tmp_path / "c")
    params = tiny_params(get_template(kind, name))
    train(_config(kind, name, params, name="mine"), tmp_path / "d")
    with pytest.raises(UserError, match="already used"):
        train(_config(kind, name, params, name="mine"), tmp_path / "e")


def test_pixel_cache_matches_the_models_preprocessing(tmp_path, tiny):
    """The cache decodes and resizes as core.models.make_transform does, so training sees what inference sees."""
    from core.models import make_transform
    from core.models.preprocess import to_input
    from core.store.datasets import dataset_records, get_dataset
    from core.training.data import image_cache

    ds = get_dataset("local", "tiny")
    records = dataset_records(ds["id"])
    for resize in ("short_side_crop", "square"):
        pre = {"image_size": 48, "resize": resize, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
        cache = image_cache(ds, records, 48, resize)
        assert image_cache(ds, records, 48, resize).folder == cache.folder  # built once
        x = to_input(torch.from_numpy(np.array(cache.pixels[:2])), torch.tensor(pre["mean"]),
                     torch.tensor(pre["std"]), torch.device("cpu"), channels_last=False)
        ref = torch.stack([make_transform(pre, train=False)(Image.open(r["path"])) for r in records[:2]])
        assert (x - ref).abs().max() < 1.0 / 255 / 0.2 + 1e-5


def test_angular_margin_loss_against_direct_computation():
    from core.models.heads import angular_margin_loss

    cos = torch.tensor([[0.8, 0.1, -0.3], [-0.95, 0.2, 0.4]])
    y = torch.tensor([0, 0])
    s, m = 16.0, 0.5
    rows = []
    for i in range(2):
        theta = math.acos(cos[i, 0])
        target = math.cos(theta + m) if theta + m <= math.pi else cos[i, 0].item() - m * math.sin(m)
        logits = [s * target] + [s * c for c in cos[i, 1:].tolist()]
        rows.append(-logits[0] + math.log(sum(math.exp(v) for v in logits)))
    assert angular_margin_loss(cos, y, s, m).item() == pytest.approx(sum(rows) / 2, rel=1e-5)


def test_cli_train_foreground_json(tmp_path, tiny, capsys):
    from core.cli import main

    argv = ["train", "--dataset", "tiny", "--kind", "classifier", "--template", LITE0[1], "--set",
            "pretrained_weights=None", "--set", "image_size=32", "--set", "num_epochs=1", "--set", "batch_size=2"]
    assert main([*argv, "--foreground", "--json", "--name", "cli-model"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_id"] == mstore.get_model("local", "cli-model")["id"] and "top1" in out["metrics"]
    assert main([*argv, "--set", "batch_size=0", "--foreground"]) == 2
    assert "batch_size" in capsys.readouterr().err


def test_transfer_classifier_on_a_trained_embedder_base(tmp_path, tiny):
    """A trained embedder as the frozen base of a new transfer classifier: same backbone weights, loadable model."""
    from core.models.io import load_model_dir

    name = LITE0[1]
    emb = train(_config("embedder", name, tiny_params(get_template("embedder", name)), name="my-embedder"),
                tmp_path / "emb")
    params = tiny_params(get_template("classifier", name))
    clf = train(_config("classifier", name, params, base_model="my-embedder", name="on-base"), tmp_path / "clf")
    row = mstore.get_model_by_id(clf.model_id)
    assert row["base_model_id"] == emb.model_id
    base_w, new_w = _weights(emb.model_path), _weights(clf.model_path)
    backbone = [k for k in base_w if k.startswith("backbone.")]  # the base's trunk inside the new model's base
    assert backbone and all(torch.equal(base_w[k], new_w[f"backbone.base.{k}"]) for k in backbone)
    assert load_model_dir(row["path"]).predict([_one_image("classifier")]).shape == (1, 2)
    with pytest.raises(UserError, match="is a classifier"):
        train(_config("classifier", name, params, base_model="on-base"), tmp_path / "bad")
    general = train(_config("classifier", name, params, base_model="general", name="on-general"), tmp_path / "gen")
    assert mstore.get_model_by_id(general.model_id)["base_model_id"] is None


def test_bf16_autocast_only_for_image_networks_on_gpus_with_bf16(monkeypatch):
    """Detectors train in fp32 on any GPU (bf16 box coordinates break NMS); other networks in bf16 where the GPU
    computes it natively, never on the CPU."""
    from core.training import runtime

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(runtime, "cuda_bf16", lambda: True)
    assert runtime.step_settings(cuda, 224).amp_bf16
    assert not runtime.step_settings(cuda, 512, detector=True).amp_bf16
    assert not runtime.step_settings(cpu, 224).amp_bf16
    monkeypatch.setattr(runtime, "cuda_bf16", lambda: False)  # a V100 or T4: bf16 only emulated
    assert not runtime.step_settings(cuda, 224).amp_bf16


# A test of which way of training a run takes, anywhere but where the mode object is made (modes.mode_for).
MODE_TEST = re.compile(r"\.mode\b\s*(==|!=|\bin\b|\bnot\s+in\b)|\bmode\s*(==|!=)"
                       r"|\.name\s*(==|!=)\s*[\"'](images|features|detector)[\"']")


def test_the_mode_is_decided_once():
    """Nothing in core/training asks which mode it runs; the pattern itself catches the old spellings."""
    import core.training

    for old in ('if plan.mode == "features":', 'if self.plan.mode != "features":', 'plan.mode in ("images",)',
                'if mode.name == "detector":'):
        assert MODE_TEST.search(old), old
    root = Path(core.training.__file__).parent
    hits = [f"{path.relative_to(root)}:{n}: {line.strip()}" for path in sorted(root.rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if MODE_TEST.search(line)]
    assert hits == []


@pytest.mark.parametrize("template", list_templates(), ids=lambda t: f"{t.kind}-{t.name}")
def test_mode_for_each_template(template):
    """Detectors train as detectors; a frozen backbone (base_gradient_multiplier 0) or a base model on cached
    features; the rest on images."""
    from types import SimpleNamespace

    from core.templates import validate
    from core.training.modes import DetectorFeaturesMode, DetectorMode, FeaturesMode, ImagesMode, mode_for

    params = validate(template.kind, template.name, {})
    plan = SimpleNamespace(kind=template.kind, params=params, base_model=None)
    frozen = params.get("base_gradient_multiplier", 1.0) == 0.0
    detector = template.kind == "detector"
    expected = ((DetectorFeaturesMode if frozen else DetectorMode) if detector
                else FeaturesMode if frozen else ImagesMode)
    assert mode_for(plan) is expected
    if template.has("base_gradient_multiplier"):
        moving = dict(params, base_gradient_multiplier=0.5)
        assert mode_for(SimpleNamespace(kind=template.kind, params=moving, base_model=None)) is (
            DetectorMode if detector else ImagesMode)
        if not detector:
            assert mode_for(SimpleNamespace(kind=template.kind, params=params, base_model={"id": 1})) is FeaturesMode


def test_the_plan_and_training_options_load_without_torch():
    """Pages and the job runner read training options from core.training.plan, which must not pull in torch."""
    import subprocess
    import sys

    code = ("import sys, core.training.plan, core.training.state, core.training; "
            "from core.training.plan import training_options; training_options({'compile': 'auto'}); "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"
