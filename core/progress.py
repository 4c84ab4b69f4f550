"""The one shape of a progress callback in ``core``: ``progress(fraction, message)``.

``fraction`` runs from 0 to 1 (a page's progress bar takes it as is); ``message`` says what is being done in words
("Decoding 120/400 images"). Importers, evaluation and the training caches report this way; a training run's steps go
to its ``Callbacks`` (``core.training.callbacks``) instead, as one record per step.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[float, str], None]


def report_count(progress: Progress | None, done: int, total: int, what: str) -> None:
    """``progress(done / total, f"{what} {done}/{total}")``; nothing when ``progress`` is None."""
    if progress is not None:
        progress(min(1.0, done / max(total, 1)), f"{what} {done}/{total}")


def part(progress: Progress | None, start: float, end: float) -> Progress | None:
    """A callback that maps its 0..1 onto ``start``..``end`` of ``progress`` (one stage of several); None for None."""
    if progress is None:
        return None
    outer = progress

    def inner(fraction: float, message: str) -> None:
        outer(start + (end - start) * min(1.0, max(0.0, fraction)), message)

    return inner
