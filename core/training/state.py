"""The loop's state (saved with every checkpoint), a run's result, and how a run ends early. No torch here."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from core.errors import UserError


class TrainingDiverged(UserError):
    """The loss stopped being a finite number; the last good checkpoint is kept."""


class StopRequested(Exception):
    """The callbacks asked the run to stop while it prepared its data (its features); nothing to save yet."""


@dataclass
class TrainState:
    """Where a run stands, saved as the checkpoint's JSON: position, running sums of the current epoch, the best
    epoch so far, the per-epoch history, and what identifies the run (a resume must match it)."""

    epoch_done: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0  # this epoch so far: the loss summed over images, and the image count
    loss_n: int = 0
    epoch_seconds: float = 0.0  # this epoch's training time in earlier sessions (a resume mid-epoch)
    epoch_images: int = 0
    train_seconds: float = 0.0
    best: dict | None = None  # {"epoch", "metric", "value"}
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    history: list[dict] = field(default_factory=list)  # one row per epoch: {"epoch", metrics...}
    finished: bool = False
    model_id: int | None = None
    identity: dict = field(default_factory=dict)  # Plan.config_identity()
    num_epochs: int = 0
    model_name: str | None = None
    tuned: dict | None = None  # core.training.tuning.tune_head's choice: a resume trains with the same rate

    @classmethod
    def from_checkpoint(cls, doc: dict) -> TrainState:
        """The state in a checkpoint's JSON (its file, optimiser and other bookkeeping keys left out)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def to_json(self) -> dict:
        """A JSON-safe copy (numpy and torch scalars as floats)."""
        return json.loads(json.dumps(asdict(self), default=float))

    def start_epoch_sums(self) -> None:
        """Clear the running sums for the next epoch."""
        self.step_in_epoch, self.loss_sum, self.loss_n, self.epoch_images, self.epoch_seconds = 0, 0.0, 0, 0, 0.0


@dataclass
class TrainResult:
    """What a run produced. ``model_id`` is None when the run stopped before the end (``stopped``)."""

    model_id: int | None
    metrics: dict
    stopped: bool
    epochs_done: int
    model_path: str | None = None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)
