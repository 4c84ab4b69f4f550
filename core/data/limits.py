"""Limits an import enforces, configurable per server (settings ``import_max_*``, see core.settings).

Archives past ``max_files`` members or ``max_unpacked_bytes`` of content are refused (zip bombs); images over
``max_pixels`` are skipped before they are decoded (decompression bombs).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

@dataclass(frozen=True)
class ImportLimits:
    """What one import may unpack and decode. Override with the setting ``import_max_files`` and the like."""

    max_files: int = 200_000  # members of an archive (directories included)
    max_unpacked_bytes: int = 20 * 1024**3  # 20 GiB of unpacked archive content
    max_pixels: int = 64_000_000  # one image; PIL warns at 89 MP, a 64 MP photo is a big phone photo
    max_video_frames: int = 10_000  # sampled frames per video

    @classmethod
    def from_env(cls, **overrides: int) -> "ImportLimits":
        """Defaults, then the settings (``import_max_files`` and the like: core.settings), then explicit overrides."""
        from core import settings

        values = {f.name: settings.get("import_" + f.name) for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
