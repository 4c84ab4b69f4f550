"""Limits an import enforces, configurable per server through environment variables.

Archives past ``max_files`` members or ``max_unpacked_bytes`` of content are refused (zip bombs); images over
``max_pixels`` are skipped before they are decoded (decompression bombs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

_ENV_PREFIX = "DEEPTRAIN_IMPORT_"


@dataclass(frozen=True)
class ImportLimits:
    """What one import may unpack and decode. Override with ``DEEPTRAIN_IMPORT_MAX_FILES`` and the like."""

    max_files: int = 200_000  # members of an archive (directories included)
    max_unpacked_bytes: int = 20 * 1024**3  # 20 GiB of unpacked archive content
    max_pixels: int = 64_000_000  # one image; PIL warns at 89 MP, a 64 MP photo is a big phone photo
    max_video_frames: int = 10_000  # sampled frames per video

    @classmethod
    def from_env(cls, **overrides: int) -> "ImportLimits":
        """Defaults, then the environment, then explicit overrides."""
        values: dict[str, int] = {}
        for f in fields(cls):
            raw = os.environ.get(_ENV_PREFIX + f.name.upper())
            if raw:
                try:
                    values[f.name] = int(raw)
                except ValueError as exc:
                    raise ValueError(f"{_ENV_PREFIX + f.name.upper()} must be an integer, got {raw!r}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
