"""Import a dataset: read the source into a staging area, decode every image once, commit in one transaction.

Flow: ``build_plan`` (checks the source, extracts archives and video frames into the staging area) -> decode in a
pool of worker processes (verify, orient, convert to RGB, hash, write blob and thumbnail into the staging area;
results are small dicts, so memory stays flat in the number of images) -> duplicates, COCO box checks, splits,
health report -> ``core.store.datasets.commit_import`` (rows in one transaction, staged files moved in). Any refusal
raises ``UserError`` and the staging area is removed: the store is exactly as it was.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Generator, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from core import accounts, paths, settings
from core.data import staging as staging_area
from core.data.decode import process_image
from core.data.health import health_report
from core.data.limits import ImportLimits
from core.data.sources import Entry, build_plan, check_box
from core.data.split import stratified_split
from core.errors import UserError
from core.fsutil import disk_full, is_disk_full
from core.progress import Progress
from core.store import datasets as store
from core.text import human_bytes
from core.users import User, as_user, require_owner, require_role


def _decode_pool(workers: int) -> Executor:
    """Where images are decoded in parallel.

    In a process with one Python thread (the command line): worker processes started with ``fork``, at once and
    with nothing to import (1.5-1.65x serial decoding with 2 workers, against 1.1-1.25x for threads). A process
    with other threads (the web server, where several people import at once) must not fork: a child gets a copy of
    locks other threads held at that moment (three browsers importing at once left one import hanging for ever,
    its pool worker blocked on a semaphore). Nor can it use ``spawn`` or ``forkserver``: their workers re-run
    ``__main__``, which in Streamlit is the page being run. There, threads: Pillow and hashlib release the GIL.
    A native pool's threads (OpenBLAS) are not Python threads and have fork handlers of their own."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        # concurrent.futures, not multiprocessing.Pool: a worker that dies (killed, out of memory) fails the import
        # with BrokenProcessPool instead of leaving it waiting for ever for that worker's results
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers, thread_name_prefix="import-decode")


POOL_MIN_FILES = 48  # below this, decoding in-process beats starting worker processes
_NAME_RE = re.compile(r"^[\w][\w .+()-]{0,99}$")


def check_name(name: str) -> str:
    """A dataset name: 1-100 characters, letters, digits, space, ``_ . + ( ) -``, not starting with punctuation."""
    cleaned = (name or "").strip()
    if not _NAME_RE.match(cleaned):
        raise UserError(f"Dataset name {name!r} is not allowed: use 1-100 letters, digits, spaces or _ . + ( ) -, "
                        "starting with a letter or digit")
    return cleaned


def prune_staging() -> int:
    """Roll back and remove the staging areas of imports whose process is gone (a live import removes its own; see
    ``core.data.staging``); return how many went."""
    return staging_area.recover()["areas"]


def check_allowed(src: Path) -> Path:
    """Check a server path a browser or API user typed; return it resolved, for the import to read.

    Allowed: a path that, with every symbolic link resolved, lies under one of the resolved ``import_roots`` and
    neither in nor above the data directory (it holds every user's stored images, the database and models, so a root
    that contains it must not open it). No roots configured: no server path at all. The refusal is one message for
    every reason, decided on the resolved path before anything is read, so it tells nothing of whether the path
    exists, what it links to or what it holds; it names only the path as typed and the configured roots.
    """
    roots = settings.get("import_roots")

    def within(path: Path, folder: Path) -> bool:
        return path == folder or folder in path.parents

    try:
        real = src.resolve()
        home = paths.home().resolve()
        ok = any(within(real, r.resolve()) for r in roots) and not within(real, home) and not within(home, real)
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an unreadable component, a NUL in the name
        ok = False
    if not ok:
        raise UserError(f"{src}: not allowed. {import_roots_help()}")
    return real


def import_roots_help() -> str:
    """One sentence for the Datasets page's server-folder form (and check_allowed's refusal): the folders a user may
    import from, or, with none configured, how an operator allows some."""
    try:
        roots = settings.get("import_roots")
    except UserError as exc:
        return f"Server folders cannot be imported until the setting import_roots is fixed: {exc}"
    if not roots:
        return ("This server imports no server folders: an operator can allow some with the setting import_roots "
                "(environment DEEPTRAIN_IMPORT_ROOTS, folders joined by ':', or import_roots = [...] in settings.toml "
                "in the data directory); upload a zip instead.")
    return (f"Server folders can be imported from under {', '.join(str(r) for r in roots)} (setting import_roots), "
            "never from the studio's data directory or a folder that holds it.")


def _decode_all(entries: list[Entry], stage_blobs: Path, stage_thumbs: Path, max_pixels: int, workers: int,
                progress: Progress | None) -> Generator[dict[str, Any], None, None]:
    """Decode entries in order, in a pool (``_decode_pool``) when there are enough of them; yields one result per
    entry."""
    store_blobs, store_thumbs = paths.subdir("blobs"), paths.subdir("thumbs")
    tasks = ((str(e.path), str(stage_blobs), str(stage_thumbs), str(store_blobs), str(store_thumbs), max_pixels)
             for e in entries)
    total = len(entries)
    every = max(1, total // 100)
    if workers <= 1 or total < POOL_MIN_FILES:
        results: Iterator[dict[str, Any]] = map(process_image, tasks)
        pool = None
    else:
        pool = _decode_pool(workers)
        results = pool.map(process_image, tasks, chunksize=8)
    try:
        for n, result in enumerate(results, 1):
            if progress and (n % every == 0 or n == total):
                progress(0.05 + 0.85 * n / total, f"Decoding {n:,}/{total:,} images")
            yield result
    except BrokenProcessPool:
        raise UserError("Import failed: an image-decoding worker process ended unexpectedly (out of memory?); "
                        "nothing was stored. Try again, or import fewer images at once.") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def import_dataset(user: User | str, source: str | os.PathLike, name: str, fmt: str = "auto",
                   val_fraction: float = 0.2, seed: int = 0, progress: Progress | None = None, *,
                   limits: ImportLimits | None = None, workers: int | None = None, video_fps: float = 1.0,
                   video_label: str | None = None, source_label: str | None = None,
                   server_folder: bool = False) -> dict[str, Any]:
    """Import a folder, zip, CSV/JSON manifest, COCO file or video as ``user``'s dataset ``name``.

    Importing into an existing name of the user's adds the new images to it (a new version); images already in it
    are reported as duplicates. Splits present in the source are kept; otherwise a stratified ``val_fraction`` goes
    to val.

    Args:
        server_folder: ``source`` is a path a browser or API user typed: it must lie under the configured import
            roots (:func:`check_allowed`). Paths from the command line are the operator's and may be anything.
        progress: called with (fraction 0..1, message).
        limits: archive and pixel limits (default: ``ImportLimits.from_env()``).
        workers: decoding processes (default: one per core).
        source_label: what the report calls the source (an uploaded file's own name rather than its temp path).

    Returns:
        The health report: dataset, version, items, concepts {name: count}, splits, skipped [{path, reason}],
        duplicates (count) and more (see ``core.data.health``).

    Raises:
        UserError: the source is refused; nothing was stored.
    """
    t0 = time.perf_counter()
    user = as_user(user)
    require_role(user, "member", "importing a dataset")
    name = check_name(name)
    limit = settings.get("max_storage_bytes")
    used = accounts.storage_used(user)
    if used >= limit:
        raise UserError(f"Your datasets hold {human_bytes(used)} of images, the most one user may store "
                        f"(max_storage_bytes = {human_bytes(limit)}); delete a dataset or ask an admin to raise it")
    if not 0.0 <= float(val_fraction) <= 0.9:
        raise UserError(f"val_fraction {val_fraction} is outside 0 to 0.9")
    limits = limits or ImportLimits.from_env()
    workers = workers or os.cpu_count() or 1
    src = Path(source).expanduser()
    label = source_label or str(src)  # as the user typed it
    if server_folder:
        src = check_allowed(src)  # the resolved path: what was checked is what is read
    prune_staging()
    staging = staging_area.create()  # locked while this process lives: the start-up check knows it is not abandoned
    try:
        if progress:
            progress(0.0, "Reading the source")
        try:
            plan = build_plan(src, fmt, staging / "scratch", limits, progress, video_fps=video_fps,
                              video_label=video_label)
        except UserError as exc:
            if source_label and src.name in str(exc):  # an upload: name the person's file, not its temporary copy
                raise UserError(str(exc).replace(src.name, Path(source_label).name)) from None
            raise
        stage_blobs, stage_thumbs = staging / "blobs", staging / "thumbs"
        existing = store.find_dataset(user.name, name)
        in_dataset = store.dataset_hashes(existing["id"]) if existing else set()

        skipped = list(plan.skipped)
        records: list[dict[str, Any]] = []
        first: dict[str, dict[str, Any]] = {}  # hash -> record kept
        dup_paths: dict[str, list[str]] = {}
        already: list[str] = []
        decoded = contextlib.closing(_decode_all(plan.entries, stage_blobs, stage_thumbs, limits.max_pixels, workers,
                                                 progress))  # closing: the pool stops before staging goes
        with decoded as results:
            for entry, res in zip(plan.entries, results):
                if "skip" in res:
                    skipped.append({"path": entry.rel, "reason": res["skip"]})
                    continue
                digest = res["hash"]
                if digest in in_dataset:
                    already.append(entry.rel)
                    continue
                for box in entry.boxes:
                    check_box(f"{Path(label).name}: a box of {entry.rel}", entry.rel,
                              (box["x"], box["y"], box["w"], box["h"]), (res["width"], res["height"]))
                kept = first.get(digest)
                if kept is not None:  # same content again: one item, labels and boxes merged
                    dup_paths.setdefault(digest, [kept["source_path"]]).append(entry.rel)
                    kept["labels"] = sorted(set(kept["labels"]) | set(entry.labels))
                    kept["boxes"] += [b for b in entry.boxes if b not in kept["boxes"]]
                    continue
                rec = dict(res, source_path=entry.rel, labels=sorted(set(entry.labels)), split=entry.split,
                           boxes=list(entry.boxes), video=entry.video, video_time=entry.video_time, group=entry.group)
                first[digest] = rec
                records.append(rec)
        if not records:
            if already:
                raise UserError(f"{Path(label).name}: every image is already in dataset {name!r}; nothing to add")
            reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
            raise UserError(f"{Path(label).name}: no valid image found ({len(skipped)} file(s) skipped"
                            f"{': ' + reasons if reasons else ''})")

        if any(r["split"] for r in records):  # the source has splits: keep them
            for r in records:
                r["split"] = r["split"] or "train"
        else:
            assigned = stratified_split([r["source_path"] for r in records], [r["labels"] for r in records],
                                        float(val_fraction), seed, [r["group"] for r in records])
            for r, split in zip(records, assigned):
                r["split"] = split

        duplicates = [{"hash": h, "paths": p, "labels": first[h]["labels"], "extra": len(p) - 1}
                      for h, p in dup_paths.items()]
        duplicates += [{"hash": None, "paths": [p], "labels": [], "extra": 1, "note": "already in the dataset"}
                       for p in already]
        new_bytes = sum(r["nbytes"] for r in records if r.get("new"))
        mine = store.owner_hashes(user.name)  # images the user holds already cost no more storage
        added = sum(r["nbytes"] for r in records if r["hash"] not in mine)
        if used + added > limit:  # refused before anything is stored
            raise UserError(f"{Path(label).name}: importing it would bring your images to {human_bytes(used + added)}, "
                            f"past the {human_bytes(limit)} one user may store (max_storage_bytes; you hold "
                            f"{human_bytes(used)} now)")
        if progress:
            progress(0.92, "Saving")
        report = health_report(records, skipped, duplicates, label, plan.kind, time.perf_counter() - t0, new_bytes)
        report["val_fraction"] = float(val_fraction)
        report["seed"] = int(seed)
        staging_area.write_commit(staging, [r["hash"] for r in records])  # what to roll back if this process dies
        dataset_id, version = store.commit_import(user.name, name, label, records, stage_blobs, stage_thumbs, report)
        report.update(dataset=name, dataset_id=dataset_id, version=version,
                      seconds=round(time.perf_counter() - t0, 3))
        if progress:
            progress(1.0, f"Imported {len(records):,} images")
        return {"dataset": name, "version": version, **report}
    except Exception as exc:
        if is_disk_full(exc):  # in the decoders, the extraction or the database's own commit
            raise disk_full(exc, f"the import of {Path(label).name} as dataset {name!r}") from None
        raise
    finally:
        staging_area.remove(staging)


def resplit(user: User | str, dataset: str | int, val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Re-draw the train/val split of a dataset, stratified and seeded; test items stay where they are.

    Frames of one video stay together. Returns the new split counts (the dataset version is bumped on a change).
    """
    if not 0.0 <= float(val_fraction) <= 0.9:
        raise UserError(f"val_fraction {val_fraction} is outside 0 to 0.9")
    ds = store.get_dataset(user, dataset)
    require_owner(user, ds, f"Dataset {ds['name']!r}")
    recs = [r for r in store.dataset_records(ds["id"]) if r["split"] != "test"]
    videos = store.item_videos(ds["id"])
    groups = [videos.get(r["item_id"]) for r in recs]
    assigned = stratified_split([r["source_path"] or str(r["item_id"]) for r in recs], [r["labels"] for r in recs],
                                float(val_fraction), seed, groups)
    store.set_splits(ds["id"], {r["item_id"]: s for r, s in zip(recs, assigned)})
    return store.split_counts(ds["id"])
