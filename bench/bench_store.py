"""The store's hot queries on SQLite and on PostgreSQL: p50 and p95 latency of each, one table.

The queries the studio runs most (through ``core.store``, as the pages and workers call it):

- ``page``: one page of 100 thumbnails with their labels (``datasets.find_items``, a random page of the largest
  dataset), what the Datasets page's grid shows;
- ``counts``: the Datasets page's list (``datasets.list_datasets``: every dataset with its items, splits and images
  per concept);
- ``claim``: claiming the next queued job (``jobs.claim_next``: the round-robin order over every queued job, then the
  conditional UPDATE), from a queue of ``--jobs`` jobs of three owners, each claimed job then finished (not timed);
- ``heartbeat``: a running job's heartbeat with its progress and a 100-point curve (``jobs.beat``).

Each store gets the same rows through the store's own import commit (synthetic blobs, no image files: rows only):
``--datasets`` datasets sharing ``--items`` items, 10 concepts, one label each. SQLite is a fresh data directory
(WAL, synchronous=FULL); PostgreSQL a fresh database on the server ``--pg-url`` names (a role that may CREATE
DATABASE; default ``DEEPTRAIN_TEST_PG_URL``), analysed after the fill (as autovacuum would be within a minute), and
dropped afterwards. Client and server on the same machine, one process,
one connection at a time (no contention): this is latency, not throughput.

    python bench/bench_store.py [--pg-url URL] [--items 20000] [--datasets 5] [--repeats 200] [--jobs 200]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONCEPTS = [f"concept-{n}" for n in range(10)]


def _fill(items: int, datasets: int) -> list[int]:
    """``datasets`` datasets of ``items // datasets`` rows each; returns their ids, largest first."""
    from core.store import datasets as store

    per = items // datasets
    empty = Path(tempfile.mkdtemp(prefix="bench-store-staged-"))
    ids = []
    for d in range(datasets):
        records = []
        for i in range(per):
            digest = hashlib.sha256(f"{d}-{i}".encode()).hexdigest()
            records.append({"hash": digest, "ext": "jpg", "width": 640, "height": 480, "grayscale": False,
                            "nbytes": 50_000, "source_path": f"{CONCEPTS[i % 10]}/{i}.jpg",
                            "split": ("train", "train", "train", "val", "test")[i % 5],
                            "labels": [CONCEPTS[i % 10]], "boxes": [], "video": None, "video_time": None})
        dataset_id, _ = store.commit_import("local", f"bench-{d}", "bench", records, empty / "b", empty / "t",
                                            {"imported": per})
        ids.append(dataset_id)
    return ids


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _measure(items: int, datasets: int, repeats: int, jobs_n: int) -> dict[str, list[float]]:
    """Fill the store the environment names, then time each query; ms per call."""
    from core.store import datasets as dstore
    from core.store import engine
    from core.store import jobs as jstore

    ids = _fill(items, datasets)
    with engine().connect() as conn:
        if conn.dialect.name == "postgresql":  # what autovacuum does within a minute of a bulk insert, now
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    rng = random.Random(0)
    pages = max(1, (items // datasets) // 100)
    results: dict[str, list[float]] = {}
    dstore.find_items(ids[0], offset=0, limit=100)  # warm: connection pool, statement caches
    results["page"] = _time(lambda: dstore.find_items(ids[0], offset=100 * rng.randrange(pages), limit=100), repeats)
    results["counts"] = _time(lambda: dstore.list_datasets("local"), repeats)

    for n in range(jobs_n):
        jstore.insert_job(f"owner{n % 3}", "train", {"dataset": "bench-0", "n": n})
    claims = []
    for _ in range(jobs_n):
        t0 = time.perf_counter()
        job = jstore.claim_next(10**6, 1)
        claims.append((time.perf_counter() - t0) * 1000)
        jstore.finish(job["id"], "succeeded")
    results["claim"] = claims

    running = jstore.insert_job("local", "train", {"dataset": "bench-0"})
    assert jstore.claim_next(10**6, 1)["id"] == running
    series = [[n / 100, 1.0 / (n + 1), 0.01] for n in range(100)]
    step = iter(range(10**9))
    results["heartbeat"] = _time(lambda: jstore.beat(running, {"epoch": 1, "step": next(step), "loss": 0.5}, series),
                                 repeats)
    return results


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg-url", default=os.environ.get("DEEPTRAIN_TEST_PG_URL"),
                    help="a PostgreSQL server (a role that may CREATE DATABASE); default $DEEPTRAIN_TEST_PG_URL")
    ap.add_argument("--items", type=int, default=20_000, help="items over all datasets (default 20,000)")
    ap.add_argument("--datasets", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=200, help="calls timed per query (default 200)")
    ap.add_argument("--jobs", type=int, default=200, help="queued jobs, each claim timed (default 200)")
    args = ap.parse_args()
    if not args.pg_url:
        ap.error("give --pg-url (or set DEEPTRAIN_TEST_PG_URL): the PostgreSQL half needs a server")

    import sqlalchemy as sa

    from tests.pg import fresh_database

    server = sa.make_url(args.pg_url)
    measured: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as home:
        os.environ["DEEPTRAIN_HOME"] = str(Path(home) / "sqlite")
        os.environ.pop("DEEPTRAIN_DB_URL", None)
        measured["SQLite"] = _measure(args.items, args.datasets, args.repeats, args.jobs)
        with fresh_database(server, prefix="bench_store_") as url:
            probe = sa.create_engine(url)
            with probe.connect() as conn:
                settings = {k: conn.exec_driver_sql(f"SHOW {k}").scalar()
                            for k in ("server_version", "fsync", "synchronous_commit")}
            probe.dispose()
            os.environ["DEEPTRAIN_HOME"] = str(Path(home) / "postgres")
            os.environ["DEEPTRAIN_DB_URL"] = url
            measured["PostgreSQL"] = _measure(args.items, args.datasets, args.repeats, args.jobs)

    import sqlite3

    print(f"{args.items:,} items in {args.datasets} datasets, {args.repeats} calls per query, {args.jobs} claims; "
          f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL), PostgreSQL {settings['server_version']} "
          f"(fsync {settings['fsync']}, synchronous_commit {settings['synchronous_commit']}), same machine\n")
    print("| query | SQLite p50 ms | SQLite p95 ms | PostgreSQL p50 ms | PostgreSQL p95 ms |")
    print("|---|---|---|---|---|")
    for query in ("page", "counts", "claim", "heartbeat"):
        cells = [f"{_pct(measured[db][query], q):.2f}" for db in ("SQLite", "PostgreSQL") for q in (50, 95)]
        print(f"| {query} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
