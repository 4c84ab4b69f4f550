"""The training engine: ``train(config, run_dir, callbacks, resume) -> TrainResult`` (no Streamlit here).

See :mod:`core.training.engine` for the loop, :mod:`core.training.data` for the pixel and feature caches and
:mod:`core.training.checkpoint` for crash-safe checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.training.callbacks import Callbacks, ConsoleCallbacks

if TYPE_CHECKING:
    from core.training.engine import TrainingDiverged, TrainResult


def train(config: dict, run_dir: Any, callbacks: Callbacks | None = None, resume: bool = False) -> "TrainResult":
    """See :func:`core.training.engine.train` (imported lazily: torch loads only when training starts)."""
    from core.training.engine import train as _train

    return _train(config, run_dir, callbacks, resume)


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "TrainingDiverged"):
        from core.training import engine

        return getattr(engine, name)
    raise AttributeError(name)


__all__ = ["Callbacks", "ConsoleCallbacks", "TrainResult", "TrainingDiverged", "train"]
