"""Shared fixtures: every test gets its own data directory, so nothing touches the user's data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CALTECH = ROOT.parent / "shared" / "datasets" / "caltech101"


@pytest.fixture(autouse=True)
def deeptrain_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DEEPTRAIN_HOME", str(home))
    monkeypatch.delenv("DEEPTRAIN_DB_URL", raising=False)
    return home


@pytest.fixture
def caltech() -> Path:
    if not (CALTECH / "101_ObjectCategories").is_dir():
        pytest.skip(f"Caltech-101 not found at {CALTECH}")
    return CALTECH


def caltech_slice(dest: Path, classes=("accordion", "anchor", "ant"), per_class: int = 6) -> Path:
    """Copy a few real Caltech-101 photos per class into ``dest/<class>/`` and return ``dest``."""
    import shutil

    src = CALTECH / "101_ObjectCategories"
    if not src.is_dir():
        pytest.skip(f"Caltech-101 not found at {CALTECH}")
    for cls in classes:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / cls).iterdir())[:per_class]:
            shutil.copy(f, dest / cls / f.name)
    return dest


@pytest.fixture
def small_folder(tmp_path) -> Path:
    """Three Caltech-101 classes, six photos each, as a folder-per-concept tree."""
    return caltech_slice(tmp_path / "src")


os.environ.setdefault("PYTHONHASHSEED", "0")
