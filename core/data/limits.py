"""Limits an import enforces, configurable per server (settings ``import_max_*``, see core.settings).

Archives past ``max_files`` members or ``max_unpacked_bytes`` of content are refused (zip bombs); images over
``max_pixels`` are skipped before they are decoded (decompression bombs); videos longer than ``max_video_seconds``, with
frames over ``max_video_pixels`` or more than ``max_video_decoded_frames`` frames are refused from their header before
a frame is decoded, and again while decoding (a header may lie).
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
    max_video_seconds: float = 4 * 3600.0  # one video's duration (header, then frame times)
    max_video_pixels: int = 7680 * 4320  # one video frame (8K UHD): header, then every decoded frame
    max_video_decoded_frames: int = 1_000_000  # frames decoded from one video to sample from (4 h at 60 fps is 864k)

    @classmethod
    def from_env(cls, **overrides: float) -> ImportLimits:
        """Defaults, then the settings (``import_max_files`` and the like: core.settings), then explicit overrides."""
        from core import settings

        values = {f.name: settings.get("import_" + f.name) for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
