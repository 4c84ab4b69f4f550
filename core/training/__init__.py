"""The training engine: ``train(config, run_dir, callbacks, resume) -> TrainResult`` (no Streamlit here).

The pieces, in the order a run uses them:

- :mod:`~core.training.plan` (light, no torch): the validated request (``make_plan``) and ``training_options``;
- :mod:`~core.training.build`: the network, optimiser (:mod:`~core.training.optim`), losses
  (:mod:`~core.training.losses`), device numerics (:mod:`~core.training.runtime`), compile policy
  (:mod:`~core.training.compiling`) and the way of training (:mod:`~core.training.modes`: images, features, detector);
- :mod:`~core.training.loop`: epochs and steps over a :class:`~core.training.state.TrainState`;
- :mod:`~core.training.register`: the finished model, stored and registered;
- :mod:`~core.training.engine`: ``train`` itself (plan, build, resume or start, loop, register).

:mod:`~core.training.data` holds the pixel and feature caches and :mod:`~core.training.checkpoint` the crash-safe
checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.training.callbacks import Callbacks, ConsoleCallbacks
from core.training.state import TrainingDiverged, TrainResult

if TYPE_CHECKING:
    from pathlib import Path


def train(config: dict, run_dir: Path | str, callbacks: Callbacks | None = None,
          resume: bool = False) -> TrainResult:
    """See :func:`core.training.engine.train` (imported lazily: torch loads only when training starts)."""
    from core.training.engine import train as _train

    return _train(config, run_dir, callbacks, resume)


__all__ = ["Callbacks", "ConsoleCallbacks", "TrainResult", "TrainingDiverged", "train"]
