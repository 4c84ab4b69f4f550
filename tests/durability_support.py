"""Roles of the concurrent-writer tests, each run as its own process: ``python -m tests.durability_support ROLE ...``.

A role works against the store of ``DEEPTRAIN_HOME`` until a deadline (UNIX time), and past it, up to OVERTIME_S,
until it has done the share of work the tests count on (a loaded machine does less in the same seconds; the tests'
minimums must not depend on its speed). Then it writes what it did as JSON to
its report file: the operations that succeeded, and every error it met (type and message), so that the test can
check the store against the sum of what every process says it committed. Errors a role expects from the others'
work (an item deleted meanwhile) are counted apart; a "database is locked" is always an error.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
from pathlib import Path

EXPECTED = ("NotFound",)  # another process deleted the thing meanwhile: the right answer, not a failure
OVERTIME_S = 120.0  # how long past its deadline a role short of its share keeps working
SHARE = {"importer": 2, "labeller": 20, "submitter": 10}  # imports and deletes (pairs), relabellings, jobs queued


def _going(deadline: float, done: int, share: int) -> bool:
    """Work on: before the deadline, or after it while short of ``share`` and within OVERTIME_S."""
    now = time.time()
    return now < deadline or (done < share and now < deadline + OVERTIME_S)


def _error(report: dict, exc: BaseException) -> None:
    kind = type(exc).__name__
    if kind in EXPECTED:
        report["expected"] = report.get("expected", 0) + 1
        return
    report["errors"].append(f"{kind}: {exc}\n{''.join(traceback.format_exception(exc))[-1500:]}")


def importer(k: int, folders: list[str], deadline: float) -> dict:
    """Import folders as own datasets, delete some, import again; report which datasets it holds with how many items.

    Names are this process's own (``imp<k>-<n>``), so every outcome is known here: an import of a new name adds the
    folder's images, a delete removes the dataset. After every step it checks that each image of the datasets it
    holds is on disk: a later import of the same photos would put a lost file back, so the end state alone can hide
    a loss that users saw meanwhile.
    """
    from core.data import service
    from core.data.importer import import_dataset

    rng = random.Random(k)
    report: dict = {"imports": 0, "deletes": 0, "errors": [], "holds": {}}
    while _going(deadline, min(report["imports"], 2 * report["deletes"]), SHARE["importer"]):
        name = f"imp{k}-{rng.randrange(2)}"
        try:
            if name in report["holds"]:
                service.delete_dataset("local", name)
                del report["holds"][name]
                report["deletes"] += 1
            else:
                folder = rng.choice(folders)
                result = import_dataset("local", folder, name, workers=rng.choice((1, 2)))
                report["holds"][name] = result["items"]
                report["imports"] += 1
        except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
            _error(report, exc)
        for held in list(report["holds"]):
            gone = [r["path"] for r in service.dataset_records("local", held) if not Path(r["path"]).is_file()]
            if gone:
                report["errors"].append(f"dataset {held}: {len(gone)} images lost their file, e.g. {gone[0]}")
    return report


def labeller(k: int, dataset: str, deadline: float) -> dict:
    """Relabel random items of one dataset; each change bumps its version by one, so the version counts them."""
    from core.data import service

    rng = random.Random(100 + k)
    report: dict = {"changes": 0, "errors": []}
    items = [r["item_id"] for r in service.find_items("local", dataset, limit=1000)]
    while _going(deadline, report["changes"], SHARE["labeller"]):
        try:
            labels = rng.sample(["red", "green", "blue"], rng.randrange(1, 3))
            service.set_item_labels("local", rng.choice(items), labels)
            report["changes"] += 1
        except Exception as exc:  # noqa: BLE001
            _error(report, exc)
    return report


def submitter(k: int, dataset: str, deadline: float) -> dict:
    """Queue small training jobs and cancel most of them while they wait; report every job id it was given."""
    from core import jobs

    rng = random.Random(200 + k)
    report: dict = {"submitted": [], "errors": []}
    config = {"dataset": dataset, "kind": "classifier", "template": "Studio_EfficientNetLite0_Transfer",
              "params": {"image_size": 32, "batch_size": 4, "num_epochs": 1, "pretrained_weights": "None",
                         "num_items_per_epoch": 8, "lrate": 0.01}}
    while _going(deadline, len(report["submitted"]), SHARE["submitter"]):
        try:
            job_id = jobs.submit("local", "train", config)
            report["submitted"].append(job_id)
            if rng.random() < 0.8:
                jobs.cancel("local", job_id, wait_s=0.5)
            else:
                jobs.list_jobs("local")
        except Exception as exc:  # noqa: BLE001
            _error(report, exc)
        time.sleep(rng.uniform(0.0, 0.05))
    return report


ROLES = {"importer": importer, "labeller": labeller, "submitter": submitter}


def main(argv: list[str]) -> int:
    role, out, deadline, k, rest = argv[0], Path(argv[1]), float(argv[2]), int(argv[3]), json.loads(argv[4])
    try:
        report = ROLES[role](k, rest, deadline)
    except BaseException as exc:  # noqa: BLE001 - the setup itself failed: say so in the report
        report = {"errors": [f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"]}
    out.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
