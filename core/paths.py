"""Where the studio keeps its data: ``DEEPTRAIN_HOME`` (default ``data/`` under the project root)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_USER = "local"  # the acting user until the team server adds sign-in


_resolved: dict[tuple[str, str], Path] = {}  # (DEEPTRAIN_HOME as given, cwd if relative) -> the resolved path


def home() -> Path:
    """The data directory, created when missing. Read from the environment each call so tests can redirect it; each
    value is resolved once per process (a request reads it a dozen times: resolving the path each time was about 5%
    of an API search, measured with py-spy), and checked with one stat (a folder removed is made again)."""
    raw = os.environ.get("DEEPTRAIN_HOME") or str(PROJECT_ROOT / "data")
    key = (raw, "" if os.path.isabs(raw) else os.getcwd())
    root = _resolved.get(key)
    if root is None:
        root = _resolved[key] = Path(raw).resolve()
    if not os.path.isdir(root):
        root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(name: str) -> Path:
    """A named folder under the data directory (blobs, thumbs, models, jobs, indexes, weights, cache, staging)."""
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_dir() -> Path:
    """The ``shared/`` folder beside the project (specification, datasets)."""
    return PROJECT_ROOT.parent / "shared"


def caltech101_dir() -> Path:
    return shared_dir() / "datasets" / "caltech101"
