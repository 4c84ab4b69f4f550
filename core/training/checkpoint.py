"""Crash-safe checkpoints: tensors in safetensors, state in JSON, every file written to a temporary name then renamed.

Layout under ``run_dir/checkpoints``: ``ckpt-<epoch>-<step>.safetensors`` holds the model's tensors (``model.*``) and
the optimiser's (``optim.<param>.<key>``); ``last.json`` and ``best.json`` name the tensor file they belong to and hold
everything else (epoch, global step, optimiser groups, best metric, history). The JSON rename is the commit: a process
killed at any moment leaves either the old pair or the new pair, plus at worst a stray ``*.tmp-*`` file that the next
save removes. Optimiser state is read back with safetensors only, so loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from core.errors import UserError
from core.fsutil import atomic_path, atomic_write_bytes, write_file

LAST = "last.json"
BEST = "best.json"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, default=_json_default).encode(), what=f"checkpoint {path}")


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_path(path, what=f"checkpoint {path}") as tmp:
        write_file(tmp, save(tensors), fsync=False)  # through the one write helper (atomic_path fsyncs)


def _model_tensors(net: torch.nn.Module, frozen_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    # copies: safetensors refuses tensors that share storage (tied weights), and the copy must not change under us
    return {f"model.{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()
            if not k.startswith(frozen_prefixes) or not frozen_prefixes}


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                plain.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def save_checkpoint(
    ckpt_dir: Path, net: torch.nn.Module, opt: torch.optim.Optimizer | None, state: dict, *, best: bool = False,
    frozen_prefixes: tuple[str, ...] = (),
) -> Path:
    """Save the model, the optimiser and ``state`` as the run's last checkpoint (and as its best when ``best``).

    ``frozen_prefixes``: state-dict prefixes of a frozen part (a frozen backbone) that never changes during the run
    and is rebuilt identically on resume; it is left out so that a checkpoint of a head on cached features is small.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = _model_tensors(net, tuple(frozen_prefixes))
    opt_json: dict = {}
    if opt is not None:
        opt_tensors, opt_json = _optimizer_split(opt)
        tensors.update(opt_tensors)
    name = f"ckpt-{int(state.get('epoch_done', 0)):05d}-{int(state.get('step_in_epoch', 0)):06d}.safetensors"
    _atomic_save_tensors(ckpt_dir / name, tensors)
    doc = {**state, "file": name, "optimizer": opt_json, "frozen_prefixes": list(frozen_prefixes)}
    atomic_write_json(ckpt_dir / LAST, doc)
    if best:
        atomic_write_json(ckpt_dir / BEST, doc)
    _prune(ckpt_dir)
    return ckpt_dir / name


def _prune(ckpt_dir: Path) -> None:
    """Remove tensor files no JSON refers to and temporary files left by a killed process."""
    keep = set()
    for doc_name in (LAST, BEST):
        doc = read_state(ckpt_dir, doc_name)
        if doc:
            keep.add(doc["file"])
    for f in ckpt_dir.iterdir():
        if ".tmp-" in f.name or (f.suffix == ".safetensors" and f.name not in keep):
            try:
                f.unlink()
            except FileNotFoundError:
                pass


def read_state(ckpt_dir: Path, which: str = LAST) -> dict | None:
    """The JSON state of the last (or best) checkpoint, or None when there is none."""
    path = Path(ckpt_dir) / which
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"checkpoint state {path}: unreadable ({exc}); start a new run") from exc


def load_checkpoint(
    ckpt_dir: Path, net: torch.nn.Module, opt: torch.optim.Optimizer | None = None, which: str = LAST
) -> dict:
    """Load the checkpoint's tensors into ``net`` (and ``opt``); return its state dict. UserError if there is none."""
    doc = read_state(ckpt_dir, which)
    if doc is None:
        raise UserError(f"no checkpoint in {ckpt_dir}: nothing to resume; start the run again")
    path = Path(ckpt_dir) / doc["file"]
    if not path.is_file():
        raise UserError(f"checkpoint {path}: missing; the run cannot be resumed")
    tensors = load_file(str(path))
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    frozen = tuple(doc.get("frozen_prefixes") or ())
    missing, unexpected = net.load_state_dict(model_sd, strict=not frozen)
    bad = [k for k in missing if not k.startswith(frozen)] + list(unexpected) if frozen else []
    if bad:
        raise UserError(f"checkpoint {path}: does not fit the network (e.g. {bad[:2]}); start a new run")
    if opt is not None and doc.get("optimizer"):
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        for pid, plain in doc["optimizer"].get("plain_state", {}).items():
            state.setdefault(int(pid), {}).update(plain)
        opt.load_state_dict({"state": state, "param_groups": doc["optimizer"]["param_groups"]})
        _match_parameter_layouts(opt)
    return doc


def _match_parameter_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (momentum, Adam's moments) its parameter's strides.

    Checkpoints store tensors contiguous, and ``load_state_dict`` moves them to the parameter's device and dtype but
    not its memory format. The fused optimiser steps pair parameter, gradient and state element by element in
    memory: with channels_last parameters and contiguous state, CUDA refuses the step, and the CPU silently mixes
    elements (a resumed run drifted from the uninterrupted one at 128 px, where the CPU trains in channels_last)."""
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    opt.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def update_state(ckpt_dir: Path, **fields: Any) -> None:
    """Change fields of the last checkpoint's JSON (same tensors), e.g. to mark the run finished."""
    doc = read_state(ckpt_dir)
    if doc is not None:
        doc.update(fields)
        atomic_write_json(Path(ckpt_dir) / LAST, doc)
