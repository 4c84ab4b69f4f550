"""Several people on one server: page-ready and search latency, and the server's CPU per user, with and without a
job training.

A real Streamlit server (``streamlit run streamlit_app.py``) on a Caltech-101 slice with a search index, and Debian's
chromium driven by Playwright (one browser, a context per user). For 1, 5 and 10 users at once, each user, for
``--rounds`` rounds: opens the Datasets page, pages its thumbnails (Browse tab, pages 2 and 3), opens Visual Search
and runs two searches (query by a dataset image, then "Find similar" on a result). Then every user sits on the Jobs
page for ``--watch`` seconds. Measured:

- page-ready: from the click to the script run finished with every image on the page loaded (p50, p95 over all
  users and rounds); search: from the click to the results drawn;
- the server process's CPU (user + system, from /proc) per active user and per watching user, in cores;
- the browsers' CPU (every chromium process this script started), in cores;
- with a job: the job's images per second while the users are active (its own progress records), against the same
  job alone just before (the ratio is the plain reference of the same run).

Goals (issue 17): the server's CPU under 0.02 cores per watching user; page-ready p95 under 2 s at 10 users with no
job. With a job the browsers, the server and the worker share this machine's cores, so those figures are reported.

    python bench/bench_load.py [--users 1,5,10] [--rounds 3] [--watch 20] [--no-job]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_jobs_polling import _position, _slice, _window  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
READY_JS = """() => !document.querySelector('[data-testid="stStatusWidget"]')
  && [...document.images].every(i => i.complete)"""


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (processes that ended are skipped)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def descendants(root: int, exclude: int) -> list[int]:
    """Every process below ``root`` except ``exclude`` and its own descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child != exclude:
                out.append(child)
                todo.append(child)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


async def ready(page) -> None:
    await page.wait_for_timeout(150)  # the click's rerun has started
    await page.wait_for_function(READY_JS, polling=50, timeout=120_000)


async def timed(page, action, until) -> float:
    t0 = time.perf_counter()
    await action()
    await until()
    await ready(page)
    return time.perf_counter() - t0


async def user_session(browser, url: str, rounds: int, start: asyncio.Barrier, watch_at: asyncio.Barrier,
                       watch_done: asyncio.Event, out: dict) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(90_000)
    nav = page.get_by_test_id("stSidebarNav")
    await page.goto(url)
    await page.get_by_text("At a glance").wait_for()
    await ready(page)
    await start.wait()
    for _ in range(rounds):
        out["page"].append(await timed(
            page, lambda: nav.get_by_role("link", name="Datasets", exact=True).click(),
            lambda: page.get_by_role("tab", name="Browse").wait_for()))
        await page.get_by_role("tab", name="Browse").click()
        await ready(page)
        for number in (2, 3):
            box = page.get_by_role("spinbutton", name="Page")

            async def go(n=number, box=box):
                await box.fill(str(n))
                await box.press("Enter")

            out["thumbs"].append(await timed(page, go, lambda: page.wait_for_timeout(0)))
        out["page"].append(await timed(
            page, lambda: nav.get_by_role("link", name="Visual Search", exact=True).click(),
            lambda: page.get_by_text("Query by").first.wait_for()))
        out["search"].append(await timed(
            page, lambda: page.get_by_text("Dataset image", exact=True).click(),
            lambda: page.get_by_role("button", name="Find similar").nth(9).wait_for()))
        out["search"].append(await timed(
            page, lambda: page.get_by_role("button", name="Find similar").nth(1).click(),
            lambda: page.get_by_role("button", name="Find similar").nth(9).wait_for()))
        await page.get_by_text("Upload an image", exact=True).click()  # the next round starts from the default
        await ready(page)
    await nav.get_by_role("link", name="Jobs", exact=True).click()
    await ready(page)
    await watch_at.wait()
    await watch_done.wait()
    await context.close()


async def phase(url: str, server_pid: int, users: int, rounds: int, watch_s: float) -> dict:
    from playwright.async_api import async_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS

    out: dict[str, list[float]] = {"page": [], "thumbs": [], "search": []}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        start, watch_at, watch_done = asyncio.Barrier(users + 1), asyncio.Barrier(users + 1), asyncio.Event()
        tasks = [asyncio.create_task(user_session(browser, url, rounds, start, watch_at, watch_done, out))
                 for _ in range(users)]
        await start.wait()
        browsers = descendants(os.getpid(), exclude=server_pid)
        t0, s0, b0 = time.perf_counter(), cpu_seconds([server_pid]), cpu_seconds(browsers)
        await watch_at.wait()  # every user has finished its rounds and opened the Jobs page
        t1, s1, b1 = time.perf_counter(), cpu_seconds([server_pid]), cpu_seconds(browsers)
        await asyncio.sleep(watch_s)
        t2, s2 = time.perf_counter(), cpu_seconds([server_pid])
        watch_done.set()
        await asyncio.gather(*tasks)
        await browser.close()
    active = t1 - t0
    return {"users": users, "seconds": active, **out,
            "server_active": (s1 - s0) / active / users, "server_watch": (s2 - s1) / (t2 - t1) / users,
            "browsers": (b1 - b0) / active}


def setup(home: Path, classes: int, per_class: int) -> None:
    from core.data.importer import import_dataset
    from core.search import service as search
    from core.users import User

    admin = User("local", "admin")
    import_dataset(admin, _slice(home.parent / "src", classes, per_class), "bench")
    search.build_index_now(admin, "bench", "general", "bench")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="1,5,10")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--watch", type=float, default=20.0, help="seconds every user sits on the Jobs page")
    ap.add_argument("--no-job", action="store_true", help="only the phases without a job")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=30)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    home = work / "home"
    os.environ["DEEPTRAIN_HOME"] = str(home)
    from core import jobs
    from core.users import User
    from tests.browser import server_pid, streamlit_server

    setup(home, args.classes, args.per_class)
    admin = User("local", "admin")
    rows = []
    with streamlit_server(home) as url:
        import urllib.request

        pid = server_pid(url)
        with urllib.request.urlopen(url):  # the first page run imports torch, plotly, ...
            pass
        asyncio.run(phase(url, pid, 1, 1, 1.0))  # warm-up: every page's first run, the index loaded
        for with_job in ([False] if args.no_job else [False, True]):
            job_id = None
            if with_job:
                params = {"image_size": 64, "batch_size": 16, "num_epochs": 200, "num_items_per_epoch": 100000,
                          "pretrained_weights": "None", "base_gradient_multiplier": 1.0, "lrate": 0.01}
                job_id = jobs.submit(admin, "train", {"dataset": "bench", "kind": "classifier",
                                                      "template": "Studio_EfficientNetLite0_Transfer",
                                                      "params": params})
                deadline = time.time() + 900
                while (_position(job_id) or (0, 0))[0] < 400:  # past the first steps and any compile probe
                    if time.time() > deadline:
                        raise RuntimeError(f"job {job_id} did not start")
                    time.sleep(0.5)
            try:
                for n in (int(u) for u in args.users.split(",")):
                    alone = _window(job_id, 15) if job_id else None
                    a = _position(job_id) if job_id else None
                    r = asyncio.run(phase(url, pid, n, args.rounds, args.watch))
                    b = _position(job_id) if job_id else None
                    r["job"] = with_job
                    r["rate_alone"] = alone
                    r["rate_load"] = (b[0] - a[0]) / (b[1] - a[1]) if a and b else None
                    rows.append(r)
                    print(f"users {n}{' + job' if with_job else ''}: page p95 {pct(r['page'], .95):.2f} s, "
                          f"search p50 {pct(r['search'], .5):.2f} s", flush=True)
            finally:
                if job_id:
                    jobs.cancel(admin, job_id, wait_s=10)

    print(f"\n{os.cpu_count()} cores; {args.classes * args.per_class} images; {args.rounds} rounds per user; "
          f"watching {args.watch:.0f} s\n")
    print("| users | job | page-ready p50 s | p95 s | thumbnails page p50 s | p95 s | search p50 s | p95 s | "
          "server cores / active user | server cores / watching user | browsers' cores | job img/s alone | "
          "job img/s with users | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = (r["rate_load"] / r["rate_alone"]) if r["rate_alone"] else None
        print(f"| {r['users']} | {'yes' if r['job'] else 'no'} | {pct(r['page'], .5):.2f} | {pct(r['page'], .95):.2f} "
              f"| {pct(r['thumbs'], .5):.2f} | {pct(r['thumbs'], .95):.2f} | {pct(r['search'], .5):.2f} | "
              f"{pct(r['search'], .95):.2f} | {r['server_active']:.3f} | {r['server_watch']:.4f} | "
              f"{r['browsers']:.2f} | {r['rate_alone'] or 0:.1f} | {r['rate_load'] or 0:.1f} | "
              f"{'' if ratio is None else f'{ratio:.2f}'} |")
    quiet = [r for r in rows if not r["job"] and r["users"] == max(x["users"] for x in rows)]
    if quiet:
        p95 = pct(quiet[0]["page"], .95)
        print(f"\npage-ready p95 at {quiet[0]['users']} users, no job: {p95:.2f} s (goal < 2 s: "
              f"{'met' if p95 < 2 else 'NOT met'})")
    watch = max(r["server_watch"] for r in rows)
    print(f"server CPU per watching user, worst phase: {watch:.4f} cores (goal < 0.02: "
          f"{'met' if watch < 0.02 else 'NOT met'})")
    searches = [t for r in rows for t in r["search"]]
    print(f"median of all searches: {statistics.median(searches):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
