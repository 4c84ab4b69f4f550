"""The product's CUDA path end to end, through the command line a user has: import, queued training jobs on the GPU,
cancel and resume mid-run, evaluation, a visual-search index built with the trained embedder, and search.

Everything goes through ``python -m core`` in a fresh data directory, so the jobs are real worker processes on the
queue (one per GPU). Prints a table: per job the device and numeric mode the worker reported, images/s of its last
epoch, wall time, and the evaluation's headline figure; then the resume and search checks. Exits non-zero when a
check fails (a job not succeeded, a resumed job with an epoch twice, a search by an indexed photo whose best hit is
not that photo).

    python bench/bench_cuda.py                                  # needs a GPU for the figures to mean anything
    python bench/bench_cuda.py --classes 3 --per-class 8 --small   # smoke run (CPU: 64 px, 1 epoch)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALTECH = ROOT.parent / "shared" / "datasets" / "caltech101" / "101_ObjectCategories"


def cli(*args: str, check: bool = True) -> str:
    proc = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise SystemExit(f"python -m core {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def cli_json(*args: str):
    return json.loads(cli(*args, "--json"))


def device_facts() -> dict:
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if facts["cuda"]:
        props = torch.cuda.get_device_properties(0)
        facts.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                     bf16=torch.cuda.is_bf16_supported(including_emulation=False))
    return facts


def make_folder(dest: Path, classes: int, per_class: int) -> Path:
    names = sorted(p.name for p in CALTECH.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google")[:classes]
    for name in names:
        (dest / name).mkdir(parents=True)
        for f in sorted((CALTECH / name).iterdir())[:per_class]:
            shutil.copy(f, dest / name / f.name)
    return dest


def train(name: str, kind: str, template: str, params: dict, extra: tuple[str, ...] = ()) -> dict:
    sets = [x for k, v in params.items() for x in ("--set", f"{k}={v}")]
    t0 = time.perf_counter()
    out = cli("train", "--dataset", "cal", "--template", template, "--kind", kind, "--name", name, *sets, *extra,
              "--json")
    job_id = int(json.loads(out)["job"])
    return {"id": job_id, "t0": t0}


def wait(job_id: int, until=("succeeded", "failed", "cancelled", "interrupted"), timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = cli_json("jobs", "show", str(job_id))
        if job["state"] in until:
            return job
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} still {job['state']} after {timeout} s")
        time.sleep(0.5)


def log_line(job_id: int, needle: str) -> str:
    for line in cli("jobs", "logs", str(job_id)).splitlines():
        if needle in line:
            return line.strip()
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--small", action="store_true", help="64 px, 1 epoch: a smoke run on a CPU")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each training run")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-cuda-"))
    os.environ["DEEPTRAIN_HOME"] = str(home / "home")
    os.environ.pop("DEEPTRAIN_DB_URL", None)
    facts = device_facts()
    print("device:", json.dumps(facts))
    src = make_folder(home / "src", args.classes, args.per_class)
    report = cli_json("dataset", "import", str(src), "--name", "cal")
    print(f"dataset: {report['items']} images, {len(report['concepts'])} concepts")

    size = 64 if args.small else None
    epochs = 1 if args.small else args.epochs
    runs = [
        ("lite0", "classifier", "Studio_EfficientNetLite0_Transfer",
         {"image_size": size or 224, "batch_size": 32, "num_epochs": epochs, "base_gradient_multiplier": 0.1}),
        ("resnet50", "classifier", "MMClassification_ResNet_50_RSB_A1",
         {"image_size": size or 160, "batch_size": 64, "num_epochs": epochs, "pretrained_weights": "None",
          "warmup_iters": 5}),
        ("arcface", "embedder", "Clarifai_ResNet_AngularMargin",
         {"image_size": size or 128, "batch_size": 32, "num_epochs": epochs, "pretrained_weights": "None",
          "embeddings_size": 256}),
    ]
    failures: list[str] = []
    rows = []
    for name, kind, template, params in runs:
        job = train(name, kind, template, params, ("--no-compile",))
        done = wait(job["id"])
        wall = time.perf_counter() - job["t0"]
        start = log_line(job["id"], "started:").split(" steps, ")[-1]
        metrics = done.get("metrics") or []
        ips = metrics[-1].get("images_per_sec") if metrics else None
        figure = ""
        if done["state"] == "succeeded":
            ev = cli_json("evaluate", name)
            summary = ev.get("summary") or ev
            key = next((k for k in ("accuracy", "top1", "recall_at_1", "recall@1", "map") if k in summary), None)
            figure = f"{key} {summary[key]:.3f}" if key else json.dumps(summary)[:80]
        else:
            failures.append(f"{name}: {done['state']}: {done.get('error')}")
        rows.append((name, template, done["state"], start[-70:], ips, wall, figure))
        print("  job", job["id"], *rows[-1], flush=True)

    # cancel mid-run, then resume: the checkpoint (weights, optimiser state, RNG) reloads onto the GPU
    job = train("resumed", "classifier", "Studio_EfficientNetLite0_Transfer",
                {"image_size": size or 224, "batch_size": 32, "num_epochs": 3, "pretrained_weights": "None",
                 "base_gradient_multiplier": 1, "num_items_per_epoch": 320 if args.small else 3200}, ("--no-compile",))
    wait(job["id"], until=("running", "succeeded", "failed", "cancelled", "interrupted"))
    while True:  # past the first epoch, so that a checkpoint exists
        shown = cli_json("jobs", "show", str(job["id"]))
        if len(shown.get("metrics") or []) >= 1 or shown["state"] != "running":
            break
        time.sleep(0.3)
    cli("jobs", "cancel", str(job["id"]))
    cancelled = wait(job["id"])
    print("  cancelled:", cancelled["state"], "after epochs", [m.get("epoch") for m in cancelled.get("metrics") or []],
          flush=True)
    cli("jobs", "resume", str(job["id"]))
    resumed = wait(job["id"])
    epochs_seen = [m.get("epoch") for m in resumed.get("metrics") or []]
    resume_ok = resumed["state"] == "succeeded" and len(epochs_seen) == len(set(epochs_seen))
    if not resume_ok:
        failures.append(f"resume: {cancelled['state']} then {resumed['state']}, epochs {epochs_seen}: "
                        f"{resumed.get('error')}")

    # the trained embedder's index, and a search by item
    search_line = "not run"
    if not any(f.startswith("arcface") for f in failures):
        t0 = time.perf_counter()
        built = json.loads(cli("index", "build", "--dataset", "cal", "--model", "arcface", "--json"))
        index_job = wait(int(built["job"]))
        if index_job["state"] != "succeeded":
            failures.append(f"index: {index_job['state']}: {index_job.get('error')}")
        else:
            index = cli_json("index", "list")[0]
            query = min(min(p for p in src.iterdir() if p.is_dir()).iterdir())
            hits = cli_json("search", str(index["name"]), str(query), "--k", "5")
            top = hits[0] if hits else {}
            facts = {k: index.get(k) for k in ("count", "dim", "index_type", "images_per_sec")}
            search_line = (f"index {index['name']!r}: {json.dumps(facts)}"
                           f", built in {time.perf_counter() - t0:.1f} s; {query.parent.name}/{query.name}: top hit "
                           f"{top.get('item')} {top.get('concepts')} score {top.get('score', 0):.4f}")
            if not hits or top.get("score", 0) < 0.999 or query.parent.name not in top.get("concepts", []):
                failures.append(f"search: the query image itself should come first, got {top}")

    print()
    print("| run | template | state | worker's device line | img/s (last epoch) | wall s | evaluation |")
    print("|---|---|---|---|---|---|---|")
    for name, template, state, start, ips, wall, figure in rows:
        ips_text = f"{ips:.0f}" if isinstance(ips, (int, float)) else "-"
        print(f"| {name} | {template} | {state} | {start} | {ips_text} | {wall:.0f} | {figure} |")
    print()
    print(f"cancel mid-run then resume: {cancelled['state']} -> {resumed['state']}, epochs {epochs_seen}")
    print(f"search: {search_line}")
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
