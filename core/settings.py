"""Every setting of the studio, defined once.

A setting ``key`` is read, in this order, from the environment variable ``DEEPTRAIN_<KEY>`` (upper case), from the
line ``key = value`` in ``$DEEPTRAIN_HOME/settings.toml``, and from its default here. The environment wins so that a
server's unit file or a test can override the file. ``home`` itself is read from the environment only (the file lives
in it). Values are checked when read: a bad one raises :class:`~core.errors.UserError` naming the variable or file,
the key and what is allowed. ``python -m core settings`` prints each with its value and where it came from; the
README's settings table lists the same keys (a test keeps them in step).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError

ENV_PREFIX = "DEEPTRAIN_"
FILE_NAME = "settings.toml"


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    kind: str  # str | int | float | paths | names
    help: str
    minimum: float | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


_ALL = (
    Setting("home", "data/ in the project", "str", "the data directory: images, database, models, logs (environment "
            "only)"),
    Setting("db_url", "", "str", "SQLAlchemy URL of the store; empty: SQLite at $DEEPTRAIN_HOME/studio.db"),
    Setting("user", "local", "str", "who the command line acts as (also `python -m core --user NAME`)"),
    Setting("import_roots", [], "paths", "server folders the pages may import from (`:`-separated in the "
            "environment, a list in the file); none: only uploads and sample data"),
    Setting("import_max_files", 200_000, "int", "members one archive may have (zip bombs)", 1),
    Setting("import_max_unpacked_bytes", 20 * 1024**3, "int", "bytes one archive may unpack to", 1),
    Setting("import_max_pixels", 64_000_000, "int", "pixels of one image, imported or uploaded to search or "
            "predict; larger ones are refused undecoded", 1),
    Setting("import_max_video_frames", 10_000, "int", "frames sampled from one video", 1),
    Setting("max_jobs", 0, "int", "jobs running at once; 0: one per GPU, one on a CPU-only server", 0),
    Setting("heartbeat_s", 1.0, "float", "seconds between a worker's heartbeats and progress writes", 0.05),
    Setting("stale_s", 15.0, "float", "a worker silent this long is judged dead", 0.1),
    Setting("job_backend", "process", "str", "how queued jobs run: process (each in a worker process of its own) or "
            "inline (to the end inside the process that queued it, before the call returns, as huey's immediate "
            "mode: for tests and debugging; no live progress, no cancel)"),
    Setting("cancel_grace_s", 20.0, "float", "how long cancel waits for a worker to stop before killing it", 0.0),
    Setting("curves_refresh_s", 10.0, "float", "seconds between redraws of a running job's curves on the Jobs page "
            "(each redraw of its charts costs the browser about a tenth of a core; progress redraws every 2 s)", 1.0),
    # --- sign-in, roles and per-user limits
    Setting("auth_header", "", "str", "the header a trusted reverse proxy sets to the signed-in user's email or name; "
            "empty: not used"),
    Setting("admins", [], "names", "users (emails or names) who are admins (`,`-separated in the environment)"),
    Setting("default_role", "viewer", "str", "the role of other signed-in users until an admin changes it: admin, "
            "member or viewer"),
    Setting("max_queued_jobs", 20, "int", "jobs one user may have queued or running at once", 1),
    Setting("max_storage_bytes", 50 * 1024**3, "int", "bytes of images one user's datasets may hold", 0),
    Setting("max_upload_bytes", 512 * 1024**2, "int", "bytes of one upload (an archive, a video, a model); the "
            "server holds about twice this in memory per upload in progress", 1),
    # --- durability and disk (nothing lost)
    Setting("cache_max_bytes", 0, "int", "bytes the training caches (decoded pixels, backbone features) may hold, "
            "least recently used evicted first; 0: cache_max_fraction of the free disk", 0),
    Setting("cache_max_fraction", 0.25, "float", "with cache_max_bytes 0: the caches' budget as a share of the data "
            "directory's free disk plus what they hold", 0.0),
    Setting("cleanup_after_s", 86400.0, "float", "exports, abandoned uploads and temporary files older than this are "
            "removed (at start-up)", 60.0),
    # --- hostile input: a video is checked from its header before any frame is decoded
    Setting("import_max_video_seconds", 4 * 3600.0, "float", "seconds one imported video may last (its header, "
            "checked before decoding, and its frames' times)", 0.001),
    Setting("import_max_video_pixels", 7680 * 4320, "int", "pixels (width x height) of one video's frames (8K UHD); "
            "checked from its header before decoding, and on every frame", 1),
    Setting("import_max_video_decoded_frames", 1_000_000, "int", "frames one video may hold (each is decoded to "
            "sample from); checked from its header before decoding, and counted while decoding", 1),
    # --- load: job workers yield to the web server
    Setting("worker_nice", 10, "int", "niceness job workers run at (0-19; higher yields more): pages and searches "
            "are served first while a job trains", 0),
    Setting("worker_threads", 0, "int", "CPU threads one job worker uses (torch, image decoding, FAISS); 0: all "
            "cores but one, leaving the web server a core", 0),
    # --- serving: the HTTP API (python -m core serve)
    Setting("api_rate_per_minute", 600, "int", "requests one API key may make per minute (a burst of that many, "
            "refilled evenly); more answer 429; 0: no limit", 0),
    Setting("loaded_max_bytes", 4 * 1024**3, "int", "bytes of networks and indexes one process (the API, the app, a "
            "worker) keeps loaded in memory, least recently used dropped first; the one in use always stays", 0),
)
SETTINGS: dict[str, Setting] = {s.key: s for s in _ALL}

_file_cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}


def _home() -> Path:
    from core import paths

    return paths.home()


def _file_values() -> tuple[Path, dict[str, Any]]:
    """The keys of ``$DEEPTRAIN_HOME/settings.toml`` (empty when there is none), re-read when the file changes."""
    path = _home() / FILE_NAME
    try:
        stat = path.stat()
    except FileNotFoundError:
        return path, {}
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _file_cache.get(path)
    if cached and cached[0] == stamp:
        return path, cached[1]
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a valid TOML file ({exc})") from None
    allowed = [k for k in SETTINGS if k != "home"]  # home is where the file lives: environment only
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise UserError(f"{path}: unknown setting {unknown[0]!r}; settings: {', '.join(allowed)}")
    _file_cache[path] = (stamp, values)
    return path, values


def _parse(setting: Setting, raw: Any, where: str) -> Any:
    def bad(what: str) -> UserError:
        return UserError(f"{where}: {setting.key} must be {what}, got {raw!r}")

    parsers: dict[str, Callable[[Any], Any]] = {"int": int, "float": float}
    if setting.kind in parsers:
        if isinstance(raw, bool):
            raise bad(f"a number ({setting.kind})")
        try:
            value = parsers[setting.kind](raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            raise bad(f"a number ({setting.kind})") from None
        if setting.kind == "float" and value != value:
            raise bad("a number")
        if setting.minimum is not None and value < setting.minimum:
            raise bad(f"at least {setting.minimum:g}")
        return value
    if setting.kind in ("paths", "names"):
        if isinstance(raw, str):
            sep = os.pathsep if setting.kind == "paths" else ","
            parts = [p.strip() for p in raw.split(sep)]
        elif isinstance(raw, list) and all(isinstance(p, str) for p in raw):
            parts = [p.strip() for p in raw]
        else:
            raise bad("a list of strings")
        parts = [p for p in parts if p]
        return [Path(p).expanduser() for p in parts] if setting.kind == "paths" else parts
    if not isinstance(raw, str):
        raise bad("a string")
    return raw.strip()


def source(key: str) -> str:
    """Where ``key``'s value comes from: the environment variable, the settings file, or "default"."""
    setting = SETTINGS[key]
    if os.environ.get(setting.env, "").strip():
        return setting.env
    if key != "home" and key in _file_values()[1]:
        return str(_file_values()[0])
    return "default"


def get(key: str) -> Any:
    """The value of setting ``key`` (environment, then settings.toml, then default), checked and typed."""
    try:
        setting = SETTINGS[key]
    except KeyError:
        raise KeyError(f"Unknown setting {key!r}; settings: {', '.join(SETTINGS)}") from None
    raw = os.environ.get(setting.env, "")
    if raw.strip():
        return _parse(setting, raw, setting.env)
    if key != "home":
        path, values = _file_values()
        if key in values:
            return _parse(setting, values[key], str(path))
    return list(setting.default) if isinstance(setting.default, list) else setting.default


def describe() -> list[dict[str, Any]]:
    """Every setting with its value, default, source and meaning (``python -m core settings``)."""
    rows = []
    for s in _ALL:
        value = get(s.key) if s.key != "home" else str(_home())
        rows.append({"key": s.key, "env": s.env, "value": [str(p) for p in value] if s.kind == "paths" else value,
                     "default": s.default, "source": source(s.key), "help": s.help})
    return rows
