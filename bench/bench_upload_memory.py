"""The web server's memory while browsers upload large archives at once.

A real Streamlit server (``streamlit run streamlit_app.py``) and Debian's chromium driven by Playwright: N browser
contexts open the Datasets page and upload the same zip through the file uploader at the same moment, then press
Import. The zip holds real Caltech-101 photos plus one incompressible member (random bytes, stored) that brings it to
the chosen size; the importer skips that member and names it. The server's resident memory (VmRSS of its process,
sampled every 20 ms) is reported as its peak and its value after every import finished; "per upload" is (peak -
idle) / (N x size), the factor the upload limit is derived from (README, "Large archives").

    python bench/bench_upload_memory.py [--mb 500] [--users 1,3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, server_pid, streamlit_server  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "datasets" / "caltech101" / "101_ObjectCategories"


def make_zip(path: Path, size_mb: int, per_class: int = 20) -> int:
    """A zip of 3 x ``per_class`` real photos (one folder per concept) plus a stored random member up to ``size_mb``.
    Returns the number of photos."""
    photos = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for cls in ("accordion", "anchor", "ant"):
            for f in sorted((PHOTOS / cls).iterdir())[:per_class]:
                zf.write(f, f"{cls}/{f.name}")
                photos += 1
        rest = size_mb * 2**20 - path.stat().st_size if path.exists() else size_mb * 2**20
        rng = random.Random(0)
        with zf.open("padding.bin", "w", force_zip64=True) as out:
            left = max(0, rest)
            while left > 0:
                block = rng.randbytes(min(left, 8 << 20))
                out.write(block)
                left -= len(block)
    return photos


class Sampler(threading.Thread):
    """Samples a process's VmRSS every ``interval`` s; ``peak`` and ``last`` in MiB."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = self.last = 0.0
        self.stop = threading.Event()

    def rss(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            self.last = self.rss()
            self.peak = max(self.peak, self.last)
            time.sleep(self.interval)


async def one_user(browser, url: str, zip_path: Path, name: str, photos: int, ready: asyncio.Barrier) -> float:
    """Open the Datasets page, upload the zip (all users at once), import it; return the seconds from upload to
    'Imported'."""
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.set_default_timeout(600_000)
    say = lambda what: print(f"{time.strftime('%X')} {name}: {what}", file=sys.stderr, flush=True)  # noqa: E731
    await page.goto(url)
    await page.get_by_text("At a glance").wait_for()
    await page.get_by_test_id("stSidebarNav").get_by_role("link", name="Datasets", exact=True).click()
    box = page.get_by_role("textbox", name="Dataset name", exact=True)
    await box.fill(name)
    await box.press("Enter")
    await page.wait_for_timeout(1000)
    say('on the Datasets page')
    await ready.wait()
    t0 = time.perf_counter()
    await page.locator("input[type=file]").first.set_input_files(str(zip_path))
    await page.get_by_test_id("stFileChipName").wait_for()
    say('uploaded')
    button = page.get_by_role("button", name="Import", exact=True)
    while await button.is_disabled():
        await page.wait_for_timeout(200)
    await button.click()
    await page.get_by_text(re.compile(rf"Imported {photos} images into")).wait_for()
    took = time.perf_counter() - t0
    say(f'imported in {took:.1f} s')
    await context.close()
    return took


async def run(users: int, size_mb: int, zip_path: Path, photos: int) -> dict:
    from playwright.async_api import async_playwright

    work = Path(tempfile.mkdtemp(prefix="bench_upload_"))
    home = work / "home"
    home.mkdir()
    try:
        limit = {"DEEPTRAIN_MAX_UPLOAD_BYTES": str(4 * 1024**3)}  # above the default: the benchmark's sizes
        with streamlit_server(home, limit, ("--server.maxUploadSize", "4096")) as url:
            sampler = Sampler(server_pid(url))
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                # warm the server (first page run imports torch, plotly, ...) before the idle figure
                page = await browser.new_page()
                await page.goto(url)
                await page.get_by_text("At a glance").wait_for()
                await page.get_by_test_id("stSidebarNav").get_by_role("link", name="Datasets", exact=True).click()
                await page.get_by_text("Dataset name").first.wait_for()
                await page.wait_for_timeout(2000)
                await page.close()
                idle = sampler.rss()
                sampler.start()
                ready = asyncio.Barrier(users)
                times = await asyncio.gather(*(one_user(browser, url, zip_path, f"up{i}", photos, ready)
                                               for i in range(users)))
                await asyncio.sleep(2)
                after = sampler.rss()
                sampler.stop.set()
                await browser.close()
            return {"users": users, "mb": size_mb, "idle": idle, "peak": sampler.peak, "after": after,
                    "per_upload": (sampler.peak - idle) / (users * size_mb), "seconds": max(times)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500, help="size of the uploaded zip in MiB")
    ap.add_argument("--users", default="1,3", help="concurrent uploads to measure, comma-separated")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_upload_zip_"))
    try:
        zip_path = work / "big.zip"
        photos = make_zip(zip_path, args.mb)
        rows = [asyncio.run(run(int(u), args.mb, zip_path, photos)) for u in args.users.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{os.cpu_count()} cores; zip {args.mb} MiB ({photos} photos + a stored random member)\n")
    print("| concurrent uploads | server RSS idle MiB | peak MiB | after imports MiB | (peak - idle) / uploaded | "
          "slowest upload+import s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['users']} | {r['idle']:.0f} | {r['peak']:.0f} | {r['after']:.0f} | {r['per_upload']:.2f} | "
              f"{r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
