"""Settings, defined once: the environment wins over $DEEPTRAIN_HOME/settings.toml, which wins over the default;
a bad value names where it came from and what is allowed; the README's table lists every setting."""

from __future__ import annotations

import pytest

from core import settings
from core.errors import UserError
from tests.conftest import ROOT


def test_default_file_then_environment(deeptrain_home, monkeypatch):
    deeptrain_home.mkdir(parents=True, exist_ok=True)
    monkeypatch.delenv("DEEPTRAIN_MAX_JOBS", raising=False)
    assert settings.get("max_jobs") == 0 and settings.source("max_jobs") == "default"
    (deeptrain_home / "settings.toml").write_text('max_jobs = 3\nimport_roots = ["/srv/photos", "~/pics"]\n')
    assert settings.get("max_jobs") == 3 and settings.source("max_jobs").endswith("settings.toml")
    assert next(str(p) for p in settings.get("import_roots")) == "/srv/photos"
    monkeypatch.setenv("DEEPTRAIN_MAX_JOBS", "2")
    assert settings.get("max_jobs") == 2 and settings.source("max_jobs") == "DEEPTRAIN_MAX_JOBS"
    monkeypatch.setenv("DEEPTRAIN_IMPORT_ROOTS", "/a:/b")
    assert [str(p) for p in settings.get("import_roots")] == ["/a", "/b"]


def test_bad_values_name_the_key_and_where(deeptrain_home, monkeypatch):
    deeptrain_home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("DEEPTRAIN_HEARTBEAT_S", "fast")
    with pytest.raises(UserError, match=r"DEEPTRAIN_HEARTBEAT_S: heartbeat_s must be a number \(float\), got 'fast'"):
        settings.get("heartbeat_s")
    monkeypatch.setenv("DEEPTRAIN_MAX_JOBS", "-1")
    with pytest.raises(UserError, match="max_jobs must be at least 0"):
        settings.get("max_jobs")
    (deeptrain_home / "settings.toml").write_text("stale_s = true\n")
    with pytest.raises(UserError, match=r"settings.toml: stale_s must be a number"):
        settings.get("stale_s")
    (deeptrain_home / "settings.toml").write_text("home = '/elsewhere'\n")
    with pytest.raises(UserError, match="unknown setting 'home'"):
        settings.get("stale_s")
    (deeptrain_home / "settings.toml").write_text("max_job = 2\n")
    with pytest.raises(UserError, match="unknown setting 'max_job'; settings: db_url, user, import_roots"):
        settings.get("stale_s")
    (deeptrain_home / "settings.toml").write_text("max_jobs = [\n")
    with pytest.raises(UserError, match="not a valid TOML file"):
        settings.get("stale_s")


def test_the_readme_lists_every_setting_with_its_default():
    readme = (ROOT / "README.md").read_text()
    for s in settings.SETTINGS.values():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{s.key}`")), None)
        assert row is not None, f"README's settings table lacks {s.key}"
        assert s.env in row, row


def test_cli_prints_every_setting(capsys):
    import json

    from core.cli import main

    assert main(["settings", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in rows] == list(settings.SETTINGS)


def test_the_data_directory_is_made_again_when_removed_and_a_relative_one_follows_the_cwd(tmp_path, monkeypatch):
    """paths.home() resolves each DEEPTRAIN_HOME once per process, yet a folder removed since is made again (the
    fuzz tests reuse a path after removing it) and a relative value means the folder under the current directory."""
    import shutil

    from core import paths

    monkeypatch.setenv("DEEPTRAIN_HOME", str(tmp_path / "home"))
    first = paths.home()
    assert first == (tmp_path / "home").resolve() and first.is_dir()
    shutil.rmtree(first)
    assert paths.home() == first and first.is_dir()
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        monkeypatch.chdir(tmp_path / sub)
        monkeypatch.setenv("DEEPTRAIN_HOME", "data")
        assert paths.home() == (tmp_path / sub / "data").resolve() and paths.home().is_dir()
