"""Does watching a job slow it down? A job's images per second with and without the Jobs page open in a real browser.

A real Streamlit server (``streamlit run streamlit_app.py``) and a real background job (a worker process training
the EfficientNet-Lite0 transfer template on a Caltech-101 slice). Debian's chromium, driven by Playwright, alternates
between the Jobs page (whose fragment redraws progress, curves and log every 2 s) and a blank page, in interleaved
windows (closed/open, then open/closed, ...). Throughput in a window is measured from the worker's own progress
records: steps done x batch size / the worker's elapsed time. Prints each pair and the median ratio open/closed;
goal: at least 0.97.

    python bench/bench_jobs_polling.py [--repeats 5] [--window 20] [--template-args ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _slice(dest: Path, classes: int, per_class: int) -> Path:
    src = ROOT.parent / "shared" / "datasets" / "caltech101" / "101_ObjectCategories"
    for cls in sorted(p.name for p in src.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")[:classes]:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / cls).iterdir())[:per_class]:
            shutil.copy(f, dest / cls / f.name)
    return dest


def _position(job_id: int) -> tuple[float, float] | None:
    """(images done so far, the worker's time of that record) from the job's progress."""
    from core.store import jobs as store

    job = store.get_job(job_id)
    p = job["progress"] or {}
    if job["state"] != "running" or not p.get("step") or not p.get("updated_at"):
        return None
    steps = (int(p["epoch"]) - 1) * int(p["steps_per_epoch"]) + int(p["step"])
    return steps * int(job["config"]["params"]["batch_size"]), float(p["updated_at"])


def _window(job_id: int, seconds: float) -> float:
    a = _position(job_id)
    time.sleep(seconds)
    b = _position(job_id)
    if a is None or b is None or b[1] <= a[1]:
        raise RuntimeError(f"job {job_id} is not running (progress {a} -> {b})")
    return (b[0] - a[0]) / (b[1] - a[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="pairs of windows (default 5)")
    ap.add_argument("--window", type=float, default=20.0, help="seconds per window (default 20)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after switching pages before measuring")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--base-gradient-multiplier", type=float, default=0.0,
                    help="0: frozen backbone (cached features, fast steps: the most sensitive case); 1: fine-tune")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    os.environ["DEEPTRAIN_HOME"] = str(home / "home")
    from playwright.sync_api import sync_playwright

    from core import jobs
    from core.data.importer import import_dataset
    from tests.browser import CHROMIUM, CHROMIUM_ARGS, streamlit_server

    import_dataset("local", _slice(home / "src", classes=5, per_class=20), "bench")
    params = {"image_size": args.image_size, "batch_size": 16, "num_epochs": 200, "num_items_per_epoch": 100000,
              "pretrained_weights": "None", "base_gradient_multiplier": args.base_gradient_multiplier, "lrate": 0.01}
    rows: list[tuple[int, float, float]] = []
    with streamlit_server(home / "home") as url:
        job_id = jobs.submit("local", "train", {"dataset": "bench", "kind": "classifier",
                                                "template": "Studio_EfficientNetLite0_Transfer", "params": params})
        try:
            # past the engine's probe steps and, for a long run like this one, its torch.compile (options.compile
            # "auto"): the windows then see only the steady speed
            from core.training.plan import AUTO_COMPILE_PROBE_STEPS

            steady = (AUTO_COMPILE_PROBE_STEPS + 4) * params["batch_size"]
            deadline = time.time() + 900
            while (_position(job_id) or (0, 0))[0] < steady:
                if time.time() > deadline or jobs.status("local", job_id)["state"] in jobs.TERMINAL:
                    raise RuntimeError(f"job {job_id} did not start: {jobs.status('local', job_id)['error']}")
                time.sleep(0.5)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(120_000)

                def measure(open_page: bool) -> float:
                    if open_page:
                        page.goto(f"{url}/Jobs")
                        page.get_by_text(f"Job {job_id}:").first.wait_for()
                    else:
                        page.goto("about:blank")
                    time.sleep(args.settle)
                    return _window(job_id, args.window)

                measure(False)  # warm-up: caches, the first steps' timings
                for r in range(args.repeats):
                    if r % 2 == 0:
                        closed, opened = measure(False), measure(True)
                    else:
                        opened, closed = measure(True), measure(False)
                    rows.append((r + 1, closed, opened))
                    print(f"pair {r + 1}: closed {closed:.1f} img/s, open {opened:.1f} img/s, ratio "
                          f"{opened / closed:.3f}", flush=True)
                browser.close()
        finally:
            jobs.cancel("local", job_id, wait_s=10)

    ratios = [o / c for _, c, o in rows]
    print()
    print("| pair | page closed img/s | Jobs page open img/s | open / closed |")
    print("|---|---|---|---|")
    for (r, c, o), q in zip(rows, ratios):
        print(f"| {r} | {c:.1f} | {o:.1f} | {q:.3f} |")
    med = statistics.median(ratios)
    print(f"\nmedian ratio open/closed: {med:.3f} (goal >= 0.97: {'met' if med >= 0.97 else 'NOT met'}); "
          f"template Studio_EfficientNetLite0_Transfer, {args.image_size} px, batch 16, "
          f"base_gradient_multiplier {args.base_gradient_multiplier}, {args.window:.0f} s windows")
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
