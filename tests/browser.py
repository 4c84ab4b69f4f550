"""Helpers for the browser journeys: a real Streamlit server on a free port, driven by Debian's chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_pid(url: str) -> int:
    """The process id of the ``streamlit_server`` answering ``url`` (benchmarks read its CPU and memory)."""
    port = url.rsplit(":", 1)[1]
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and f"--server.port\x00{port}\x00" in Path(f"/proc/{entry}/cmdline").read_text():
                return int(entry)
        except OSError:
            continue
    raise LookupError(f"no streamlit server on port {port}")


@contextmanager
def served(cmd: list[str], env: dict[str, str], log_path: Path, ready_url: str,
           start_s: float = 90.0) -> Iterator[None]:
    """Run ``cmd`` (a server) in a session of its own with its output in ``log_path``; return once ``ready_url``
    answers 200, and stop it when the block ends. Fails with the log's tail when it exits or does not answer."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + start_s
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd[2:4])} did not start ({log_path}): {log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def streamlit_server(home: Path, extra_env: dict[str, str] | None = None, extra_args: tuple[str, ...] = (),
                     port: int | None = None) -> Iterator[str]:
    """Start ``streamlit run streamlit_app.py`` on loopback with its own data directory; yield its URL."""
    port = port or free_port()
    env = dict(os.environ, DEEPTRAIN_HOME=str(home), **(extra_env or {}))
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true", *extra_args]
    with served(cmd, env, home.parent / f"streamlit-{port}.log", url + "/_stcore/health"):
        yield url


SCREENSHOTS_ENV = "DEEPTRAIN_SCREENSHOTS"  # a folder: the journeys write the README's screenshots there (docs/)


def shot(page, tmp_path: Path, name: str) -> None:
    """Screenshot the page as ``name``.png: into the journey's tmp_path, and into $DEEPTRAIN_SCREENSHOTS when set
    (``DEEPTRAIN_SCREENSHOTS=docs .venv/bin/python -m pytest tests/test_browser_journeys.py`` regenerates the
    README's screenshots)."""
    page.mouse.move(0, 0)  # no tooltip over the page
    page.screenshot(path=str(tmp_path / f"{name}.png"))
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        target = (ROOT / folder) if not Path(folder).is_absolute() else Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / f"{name}.png"))


@contextmanager
def saved_on_failure(page, tmp_path: Path, home: Path):
    """Around a journey: when it fails, save the page's HTML, a screenshot and point at the server's log, and print
    their paths (pytest shows a failing test's output, so CI's log names them)."""
    try:
        yield
    except BaseException:
        html, png = tmp_path / "failure.html", tmp_path / "failure.png"
        try:
            html.write_text(page.content(), encoding="utf-8")
            page.screenshot(path=str(png), full_page=True)
        except Exception as exc:  # noqa: BLE001 - the browser may be the thing that failed; report the first error
            print(f"journey failed; the page could not be saved: {exc}")
        logs = sorted(home.parent.glob("streamlit-*.log"))
        print(f"journey failed: page HTML {html}, screenshot {png}, server log {', '.join(map(str, logs)) or '-'}")
        raise


@contextmanager
def chromium():
    """A Playwright browser: headless Debian chromium (skips the test when chromium or playwright is missing)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        # Playwright gives each launch a new empty profile directory of its own.
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


VIEWPORT = {"width": 1400, "height": 1000}  # the size the journeys are written for


def new_page(browser_or_context):
    """A page of the journeys' size (a browser's own, or one of a context made with ``viewport=VIEWPORT``), with
    their default timeout."""
    page = browser_or_context.new_page(**({"viewport": VIEWPORT} if hasattr(browser_or_context, "contexts") else {}))
    page.set_default_timeout(60_000)
    return page


@contextmanager
def browser_page(tmp_path: Path):
    """A Playwright page in headless Debian chromium (skips the test when chromium or playwright is missing)."""
    with chromium() as browser:
        yield new_page(browser)


def wait_idle(page) -> None:
    """Wait until Streamlit has finished the current script run (no 'Running...' status widget)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000
    )
