"""Search at scale: the index the product chooses vs exact search vs NumPy brute force, on clustered unit vectors.

Data (issue 8): ``--centres`` centres drawn from a standard normal in ``--dim`` dimensions; each vector is a random
centre plus standard-normal noise of the same scale, L2-normalised; ``--queries`` held-out queries from the same
mixture. For each size: build time and resident memory added by the product's index (``core.search.index.build``),
single-query latency p50/p99 (one query at a time, FAISS with the product's threads), recall@10 against exact search
on the ``--queries`` (never seen by the tuner, which holds out vectors of its own), and the tuner's estimates;
then the exact FAISS Flat index against NumPy brute force on the same vectors (single-query p50 and a 1,000-query
batch), as a speed ratio (NumPy time / Flat time: >= 1 means Flat is at least as fast).

    python bench/bench_search.py                       # 10k, 100k, 1M (needs ~6 GB free memory, ~10 min)
    python bench/bench_search.py --sizes 10000,100000  # tuning runs
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.search import index as vindex


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (no psutil needed)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def clustered(n: int, centres: np.ndarray, rng: np.random.Generator, block: int = 100_000) -> np.ndarray:
    """``n`` unit vectors: a random centre plus N(0, 1) noise, normalised; generated blockwise to bound memory."""
    out = np.empty((n, centres.shape[1]), np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        v = centres[rng.integers(0, len(centres), m)]
        v += rng.standard_normal(v.shape, dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[start:start + m] = v
    return out


def single_query_ms(search, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Latency of each query searched alone, in milliseconds (after 20 warm-up queries)."""
    for q in queries[:20]:
        search(q[None, :], k)
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        search(q[None, :], k)
        times[i] = time.perf_counter() - t0
    return times * 1e3


def numpy_search(vectors: np.ndarray):
    """NumPy brute force: one matrix product, argpartition, sort of the top k. The plain reference."""
    def search(queries: np.ndarray, k: int):
        sims = queries @ vectors.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-top, axis=1)
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)
    return search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--centres", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-flat-above", type=int, default=1_000_000, help="skip the Flat-vs-NumPy rows above this")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    import faiss

    threads = faiss.omp_get_max_threads()
    print(f"# {args.dim}-d, {args.centres} centres, {args.queries} held-out queries, FAISS {faiss.__version__}, "
          f"{threads} FAISS threads, {os.cpu_count()} CPUs; EXACT_MAX_VECTORS={vindex.EXACT_MAX_VECTORS}", flush=True)
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.centres, args.dim), dtype=np.float32)
    queries = clustered(args.queries, centres, rng)
    t0 = time.perf_counter()
    data = clustered(max(sizes), centres, rng)
    print(f"# generated {len(data):,} vectors in {time.perf_counter() - t0:.1f} s", flush=True)

    header = (f"{'n':>9} {'index':>6} {'params':<34} {'build s':>8} {'RSS MB':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'R@10':>6} | {'flat p50':>8} {'numpy p50':>9} {'ratio1':>6} {'flat b1k s':>10} {'np b1k s':>8} "
              f"{'ratioB':>6}")
    print(header)
    for n in sizes:
        x = data[:n]
        ids = np.arange(n, dtype=np.int64)
        t0 = time.perf_counter()
        truth = vindex.exact_topk(x, ids, queries, 10)[1]
        exact_s = time.perf_counter() - t0

        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        index = vindex.build(ids, x, seed=args.seed)
        build_s = time.perf_counter() - t0
        gc.collect()
        rss_added = rss_bytes() - rss0
        lat = single_query_ms(index.search, queries)
        _, found = index.search(queries, 10)
        recall = vindex.recall_at_k(found, truth, 10)
        params = ",".join(f"{k}={v}" for k, v in index.params().items() if k in ("nlist", "nprobe"))
        tuned = index.params().get("tune_recalls")  # the tuner's own estimates (its held-out queries, not these)
        backend = index.backend
        del index
        gc.collect()

        flat_cols = ""
        if n <= args.skip_flat_above:
            flat = vindex.build(ids, x, backend="flat")
            ref = numpy_search(x)
            flat_lat = single_query_ms(flat.search, queries[:200])
            np_lat = single_query_ms(ref, queries[:200])
            t0 = time.perf_counter()
            _, fi = flat.search(queries, 10)
            flat_b = time.perf_counter() - t0
            t0 = time.perf_counter()
            ref(queries, 10)
            np_b = time.perf_counter() - t0
            agree = vindex.recall_at_k(fi, truth, 10)
            flat_cols = (f"{np.median(flat_lat):8.2f} {np.median(np_lat):9.2f} "
                         f"{np.median(np_lat) / np.median(flat_lat):6.2f} {flat_b:10.2f} {np_b:8.2f} "
                         f"{np_b / flat_b:6.2f}")
            if agree < 0.999:
                flat_cols += f"  (flat recall {agree:.4f}!)"
            del flat
            gc.collect()
        print(f"{n:>9,} {backend:>6} {params:<34} {build_s:8.1f} {rss_added / 2**20:8.0f} {np.median(lat):7.3f} "
              f"{np.percentile(lat, 99):7.3f} {recall:6.3f} | {flat_cols}", flush=True)
        print(f"#   (exact top-10 for {len(queries)} queries with NumPy blocks took {exact_s:.1f} s)", flush=True)
        if tuned:
            print(f"#   nprobe tuned on its own held-out queries: recall@10 by nprobe {tuned}", flush=True)


if __name__ == "__main__":
    main()
