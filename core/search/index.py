"""One interface over vector-index backends: exact FAISS Flat, approximate FAISS IVF, and a NumPy reference.

Vectors are L2-normalised embeddings, so cosine similarity is the inner product and every backend ranks by inner
product, best first. Each backend keeps its own id map (int64 item ids) and saves it in the same file as the vectors,
written to a temporary file and moved into place with ``os.replace`` so a reader never sees half an index.

Which backend the product uses is chosen by size (``choose_backend``): exact Flat while the index holds at most
``EXACT_MAX_VECTORS`` vectors, IVF-Flat above it, with ``nprobe`` tuned at build time until recall@10 against exact
search reaches ``TARGET_RECALL`` on held-out queries: a sample of the vectors kept out of both the k-means training and
the index while tuning (added afterwards), so that they are searched as a new image is. Figures behind the constants
are in bench/README.md (bench/bench_search.py).
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from core.device import cpu_threads
from core.errors import UserError
from core.fsutil import atomic_path, open_write

# --- named limits and tuning constants (figures measured by bench/bench_search.py on the 2-core machine) ---
EXACT_MAX_VECTORS = 20_000  # Flat single-query search: ~0.9 ms at 10k, ~2 ms at 20k x 512-d (1 thread); IVF above
IVF_LISTS_PER_SQRT_N = 8.0  # nlist ~ 8 * sqrt(n), a power of two: 8,192 lists at 1M. With 4,096 lists for 10,000
# clusters, some clusters' vectors were spread over lists far from their queries and recall@10 stopped at 0.98 (0.984
# with nprobe 64, p50 3 ms); with 8,192 nprobe 2 reaches 0.9996 at p50 0.72 ms, build 122 s (bench/README.md)
IVF_MIN_LISTS = 64
IVF_TRAIN_POINTS_PER_LIST = 32  # k-means sample: 32 x 8,192 = 262k vectors at 1M (about 100 s of the build)
IVF_TRAIN_ITERATIONS = 10
HALF_QUANTIZER_LISTS = 4096  # from this many lists the coarse quantizer keeps its centroids in float16: a query's
# scan of 8,192 centroids of 512-d took 0.37 ms instead of 0.65 ms, with the same first two lists for all of 300
# queries. An HNSW graph over the centroids (FAISS's IVF_HNSW, 0.31 ms) lost recall on the 1M clustered set: its
# centroids are near-orthogonal, the graph's search missed a query's lists and recall@10 stopped at 0.992 (target
# 0.995) whatever nprobe (bench/README.md)
TARGET_RECALL = 0.995  # nprobe is raised until recall@10 on the held-out tuning queries reaches this (goal: >= 0.98 on
# other queries; 200 queries estimate recall to about +-0.005, so the goal keeps a margin)
TUNE_QUERIES = 200  # vectors held out of the index while nprobe is tuned (searched as new images), added afterwards
MAX_NPROBE = 64  # latency bound: where recall needs more lists, the data has no tight neighbours to find
BATCH_THREADS_FROM = 16  # searches of fewer queries run on one thread (see _FaissIndex._search)
REBUILD_GROWTH = 4.0  # an IVF index trained on n vectors is rebuilt (re-trained) once it holds more than 4 x n

_MAGIC = b"DTSINDEX"  # file format: magic, u64 header length, JSON header, u64 id count, int64 ids, payload
_IO_CHUNK = 1 << 24


def _as_ids(ids: Any) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    return arr


def _example(values: np.ndarray) -> str:
    return str(int(values[0])) if len(values) else "-"


class VectorIndex(ABC):
    """A set of (id, unit vector) pairs searched by inner product. Safe for concurrent searches from many threads.

    Capability properties say what a backend can do (``exact``, ``supports_remove``, ``metric``, ``max_k``), so
    callers never branch on the backend's name.
    """

    backend: str = ""
    exact: bool = True
    supports_remove: bool = True
    metric: str = "cosine"  # inner product of L2-normalised vectors
    max_k: int | None = None  # None: any k up to the number of vectors

    def __init__(self, dim: int) -> None:
        if int(dim) <= 0:
            raise UserError(f"An index needs a positive embedding dimension, got {dim}")
        self.dim = int(dim)
        self._ids = np.empty(0, dtype=np.int64)  # sorted, for membership checks
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- public interface
    @property
    def count(self) -> int:
        return int(len(self._ids))

    def __len__(self) -> int:
        return self.count

    @property
    def ids(self) -> np.ndarray:
        """The item ids in the index, sorted (a copy)."""
        return self._ids.copy()

    def contains(self, ids: Any) -> np.ndarray:
        """A boolean mask: which of ``ids`` are in the index."""
        return np.isin(_as_ids(ids), self._ids)

    def add(self, ids: Any, vectors: Any) -> None:
        """Add vectors under new ids. Refuses ids already present, repeated ids, and vectors of the wrong shape."""
        ids = _as_ids(ids)
        vectors = self._check_vectors(vectors, "vectors to add")
        if len(ids) != len(vectors):
            raise UserError(f"Got {len(ids)} ids for {len(vectors)} vectors; give one id per vector")
        if len(ids) == 0:
            return
        uniq, counts = np.unique(ids, return_counts=True)
        if len(uniq) != len(ids):
            rep = uniq[counts > 1]
            raise UserError(f"Found {len(rep)} ids (eg {_example(rep)}) given more than once in one add")
        with self._lock:
            present = uniq[np.isin(uniq, self._ids)]
            if len(present):
                raise UserError(f"Found {len(present)} ids (eg {_example(present)}) that already exist in the index")
            self._add(ids, vectors)
            self._ids = np.union1d(self._ids, uniq)

    def remove(self, ids: Any) -> int:
        """Remove vectors by id; returns how many were removed. Refuses ids that are not in the index."""
        ids = np.unique(_as_ids(ids))
        if len(ids) == 0:
            return 0
        with self._lock:
            missing = ids[~np.isin(ids, self._ids)]
            if len(missing):
                raise UserError(f"Found {len(missing)} ids (eg {_example(missing)}) that are not in the index")
            if not self.supports_remove:
                raise UserError(f"The {self.backend} index cannot remove vectors; rebuild it instead")
            self._remove(ids)
            self._ids = np.setdiff1d(self._ids, ids, assume_unique=True)
        return int(len(ids))

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest vectors of each query, best first: (scores float32 (nq, k'), ids int64 (nq, k')).

        ``k' = min(k, count)``; a backend that finds fewer than ``k'`` fills the rest with id -1 and score -inf (IVF
        probes more lists for such a query instead). An empty index returns arrays with zero columns.
        """
        queries = self._check_vectors(queries, "query")
        k = int(k)
        if k <= 0:
            raise UserError(f"k must be at least 1, got {k}")
        if self.max_k is not None and k > self.max_k:
            raise UserError(f"k must be at most {self.max_k} for the {self.backend} index, got {k}")
        with self._lock:
            kk = min(k, self.count)
            if kk == 0 or len(queries) == 0:
                return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
            scores, ids = self._search(queries, kk)
        scores = np.asarray(scores, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        scores[ids < 0] = -np.inf
        return scores, ids

    def params(self) -> dict:
        """The backend's parameters, recorded with the index (e.g. nlist and nprobe for IVF)."""
        return {}

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory (vectors, lists, id map), as an estimate from its sizes."""
        return self.count * (self.dim * 4 + 8)

    def facts(self) -> dict:
        return {"backend": self.backend, "exact": self.exact, "dim": self.dim, "count": self.count,
                "metric": self.metric, "params": self.params(), "memory_bytes": self.memory_bytes()}

    def plain_faiss(self, vectors: Any):
        """A plain FAISS index (``faiss.write_index`` writes it, ``faiss.read_index`` reads it with FAISS alone) of
        ``vectors``, rows of this index's vectors in any order, whose FAISS ids are the row numbers 0..n-1 and that
        ranks as this index does: exact inner product (IndexFlatIP) for an exact backend; IVF overrides this with its
        own trained lists and nprobe. For a portable copy (``core.search.bundle``); holds a copy of the vectors."""
        faiss = _faiss()
        vectors = self._check_vectors(vectors, "vectors to copy")
        out = faiss.IndexFlatIP(self.dim)
        out.add(vectors)
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the index and its id map to one file atomically (temporary file in the same folder + os.replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"backend": self.backend, "dim": self.dim, "params": self.params(),
                             "state": self._state()}).encode()
        with atomic_path(path, what=f"search index {path}") as tmp, self._lock, open_write(tmp) as fh:
            fh.write(_MAGIC)
            fh.write(struct.pack("<Q", len(header)))
            fh.write(header)
            fh.write(struct.pack("<Q", self.count))
            fh.write(self._ids.tobytes())
            self._write_payload(fh)

    # ----------------------------------------------------------------- backend hooks
    @abstractmethod
    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _remove(self, ids: np.ndarray) -> None: ...

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _write_payload(self, fh: BinaryIO) -> None: ...

    @abstractmethod
    def _read_payload(self, fh: BinaryIO, ids: np.ndarray) -> None: ...

    def _state(self) -> dict:
        return {}

    def _set_state(self, state: dict) -> None:  # noqa: B027 - optional: only indexes with tuned state override it
        pass

    # ----------------------------------------------------------------- helpers
    def _check_vectors(self, vectors: Any, what: str) -> np.ndarray:
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise UserError(f"The {what} must be a 2-D array (n, {self.dim}), got shape {tuple(arr.shape)}")
        if arr.shape[1] != self.dim:
            raise UserError(f"The {what} have dimension {arr.shape[1]}, but this index holds {self.dim}-d embeddings; "
                            f"query it with the model it was built with")
        if arr.size and not np.isfinite(arr).all():
            bad = np.where(~np.isfinite(arr).all(axis=1))[0]
            raise UserError(f"Found {len(bad)} {what} rows (eg row {bad[0]}) with NaN or infinite values")
        return np.ascontiguousarray(arr)


# =================================================================== NumPy reference
class NumpyIndex(VectorIndex):
    """Brute force with NumPy: the reference the FAISS backends are tested against. Exact, any size, slow."""

    backend = "numpy"

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self._vecs = np.empty((0, self.dim), np.float32)
        self._vec_ids = np.empty(0, np.int64)  # row order of _vecs

    def _add(self, ids, vectors):
        self._vecs = np.concatenate([self._vecs, vectors])
        self._vec_ids = np.concatenate([self._vec_ids, ids])

    def _remove(self, ids):
        keep = ~np.isin(self._vec_ids, ids)
        self._vecs, self._vec_ids = self._vecs[keep], self._vec_ids[keep]

    def _search(self, queries, k):
        sims = queries @ self._vecs.T
        n = sims.shape[1]
        if k < n:
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(n), (len(queries), n))
        top = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")  # best first
        idx = np.take_along_axis(part, order, axis=1)
        return np.take_along_axis(sims, idx, axis=1), self._vec_ids[idx]

    def memory_bytes(self):
        return int(self._vecs.nbytes + self._vec_ids.nbytes + self._ids.nbytes)

    def _write_payload(self, fh):
        fh.write(self._vec_ids.tobytes())
        fh.write(self._vecs.tobytes())

    def _read_payload(self, fh, ids):
        n = len(ids)
        self._vec_ids = np.frombuffer(_read_exact(fh, n * 8), dtype=np.int64).copy()
        self._vecs = np.frombuffer(_read_exact(fh, n * self.dim * 4), dtype=np.float32).reshape(n, self.dim).copy()


# =================================================================== FAISS backends
def _faiss():
    import faiss  # imported lazily: pages and the CLI import this module without paying for FAISS

    return faiss


class _FaissIndex(VectorIndex):
    """Shared FAISS plumbing: ids via add_with_ids / remove_ids, (de)serialisation through callback IO."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        # A FAISS index (IndexIDMap2 or IndexIVFFlat), built by the subclass. Any: FAISS's bundled stubs describe its
        # SWIG classes only in part (no callback IO, no invlists resize), so the calls below are checked by the tests.
        self._index: Any = None

    def _add(self, ids, vectors):
        self._index.add_with_ids(vectors, ids)

    def _remove(self, ids):
        faiss = _faiss()
        removed = self._index.remove_ids(faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids)))
        if removed != len(ids):
            raise RuntimeError(f"FAISS removed {removed} of {len(ids)} vectors")

    def _search(self, queries, k):
        faiss = _faiss()
        # One thread for a handful of queries: a single query gains nothing from OpenMP, and on a busy 2-core server
        # its threads wait on each other (measured: 0.8 ms with 1 thread vs 9-30 ms with 2 at 10k x 512-d).
        threads = cpu_threads()
        faiss.omp_set_num_threads(1 if len(queries) < BATCH_THREADS_FROM else threads)
        try:
            return self._index.search(queries, k)
        finally:
            faiss.omp_set_num_threads(threads)  # the setting is per calling thread; builds want all cores

    def _write_payload(self, fh):
        faiss = _faiss()
        writer = faiss.PyCallbackIOWriter(fh.write, _IO_CHUNK)
        faiss.write_index(self._index, writer)
        del writer

    def _read_payload(self, fh, ids):
        faiss = _faiss()
        reader = faiss.PyCallbackIOReader(fh.read, _IO_CHUNK)
        self._index = faiss.read_index(reader)
        del reader
        if self._index.d != self.dim or self._index.ntotal != len(ids):
            raise UserError(f"The index file holds {self._index.ntotal} vectors of dimension {self._index.d}, "
                            f"but its header says {len(ids)} of {self.dim}; rebuild the index")


class FlatIndex(_FaissIndex):
    """Exact inner-product search (FAISS IndexFlatIP behind an IndexIDMap2)."""

    backend = "flat"
    exact = True

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        faiss = _faiss()
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def memory_bytes(self):
        return int(self.count * (self.dim * 4 + 8 + 8))  # vectors, id map, and the reverse map


class IVFIndex(_FaissIndex):
    """Approximate search: FAISS IndexIVFFlat (inner product), k-means coarse quantizer, ``nprobe`` lists per query.

    Train with ``train(sample)`` before adding; ``tune_nprobe`` picks the smallest nprobe reaching a recall target.
    The quantizer finds a query's lists by a scan of the centroids, kept in float32 (``"flat"``), or from
    ``HALF_QUANTIZER_LISTS`` lists on (``quantizer=None``) in float16 (``"fp16"``); k-means and the vectors' lists
    are exact either way.
    """

    backend = "ivf"
    exact = False
    max_k = 2048  # FAISS CPU search limit for IVF result heaps is generous; cap to keep latency bounded

    def __init__(self, dim: int, nlist: int, nprobe: int = 8, quantizer: str | None = None) -> None:
        super().__init__(dim)
        faiss = _faiss()
        self.nlist = int(nlist)
        kind = quantizer or ("fp16" if self.nlist >= HALF_QUANTIZER_LISTS else "flat")
        if kind == "fp16":
            coarse = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        elif kind == "flat":
            coarse = faiss.IndexFlatIP(self.dim)
        else:
            raise UserError(f"Unknown IVF quantizer {quantizer!r}; use 'flat' or 'fp16'")
        self._index = faiss.IndexIVFFlat(coarse, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self._index.own_fields = True
        coarse.this.disown()
        self._index.nprobe = int(nprobe)
        self.trained_on = 0
        self.tuned: dict = {}

    @property
    def quantizer(self) -> str:
        """How the quantizer keeps its centroids: "fp16" or "flat" (float32)."""
        return "fp16" if isinstance(_faiss().downcast_index(self._index.quantizer), _faiss().IndexScalarQuantizer) \
            else "flat"

    @property
    def nprobe(self) -> int:
        return int(self._index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._index.nprobe = int(max(1, min(value, self.nlist)))

    def train(self, sample: np.ndarray, seed: int = 0) -> None:
        sample = self._check_vectors(sample, "training vectors")
        if len(sample) < self.nlist:
            raise UserError(f"An IVF index with {self.nlist} lists needs at least {self.nlist} training vectors, "
                            f"got {len(sample)}")
        self._index.cp.niter = IVF_TRAIN_ITERATIONS
        self._index.cp.seed = int(seed)
        self._index.cp.max_points_per_centroid = max(IVF_TRAIN_POINTS_PER_LIST, 1)
        self._index.cp.spherical = True  # unit-norm centroids suit inner product on unit vectors
        if self.quantizer == "fp16":  # k-means assigns in float32; FAISS then adds its centroids to the quantizer
            self._clustering = _faiss().IndexFlatIP(self.dim)  # held here: FAISS keeps only a pointer to it
            self._index.clustering_index = self._clustering
        self._index.train(sample)
        self.trained_on = int(len(sample))

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def _add(self, ids, vectors):
        """Assign to lists, reserve each list's exact final size, then add: FAISS grows lists by doubling, which left
        ~1.3x the vectors' bytes resident (measured 506 MB vs 378 MB for 200k x 512-d)."""
        if not self.is_trained:
            raise UserError("The IVF index must be trained before vectors are added")
        faiss = _faiss()
        _, assign = self._assigner().search(vectors, 1)
        assign = np.ascontiguousarray(assign.reshape(-1), dtype=np.int64)
        lists = self._index.invlists
        counts = np.bincount(assign, minlength=self.nlist)
        for lst in np.nonzero(counts)[0].tolist():
            cur = lists.list_size(lst)
            lists.resize(lst, cur + int(counts[lst]))  # std::vector capacity = the final size, exactly
            lists.resize(lst, cur)
        self._index.add_core(len(vectors), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(assign))

    def _assigner(self):
        """What puts a vector in its list: a float32 scan of the quantizer's centroids (BLAS, fast for a batch). A
        vector is in the list whose centroid is nearest to it, whatever the quantizer keeps (an HNSW graph used here
        put 1.3% of 1M vectors in another list, and recall@10 stopped at 0.9875 whatever nprobe)."""
        if self.quantizer == "flat":
            return self._index.quantizer
        scan = _faiss().IndexFlatIP(self.dim)
        scan.add(self._index.quantizer.reconstruct_n(0, self.nlist))
        return scan

    def _search(self, queries, k):
        """FAISS's search, then again with twice the lists for each query whose probed lists held fewer than ``k``
        vectors (with nprobe 1 a small list gave a query 7 results of 10), until it has ``k`` or every list is
        probed."""
        scores, ids = super()._search(queries, k)
        short = np.nonzero(ids[:, k - 1] < 0)[0]
        nprobe = self.nprobe
        while len(short) and nprobe < self.nlist:
            nprobe = min(self.nlist, nprobe * 2)
            more_s, more_i = self._index.search(queries[short], k, params=_faiss().SearchParametersIVF(nprobe=nprobe))
            scores[short], ids[short] = more_s, more_i
            short = short[more_i[:, k - 1] < 0]
        return scores, ids

    def params(self):
        return {"nlist": self.nlist, "nprobe": self.nprobe, "quantizer": self.quantizer, "trained_on": self.trained_on,
                **self.tuned}

    def plain_faiss(self, vectors: Any):
        """This index's coarse quantizer, lists and nprobe over ``vectors`` with the row numbers as ids: each vector
        lands in the list it has here, so a search probes the same lists and ranks the same vectors."""
        faiss = _faiss()
        vectors = self._check_vectors(vectors, "vectors to copy")
        with self._lock:
            out = faiss.clone_index(self._index)
        out.reset()  # keeps the trained quantizer and nprobe, drops the vectors
        out.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
        return out

    def memory_bytes(self):
        centroid = 2 if self.quantizer == "fp16" else 4  # bytes a value
        return int(self.count * (self.dim * 4 + 8) + self.nlist * self.dim * centroid + self.nlist * 64)

    def _state(self):
        return {"nlist": self.nlist, "trained_on": self.trained_on, "tuned": self.tuned}

    def _set_state(self, state):
        self.nlist = int(state.get("nlist", self._index.nlist))
        self.trained_on = int(state.get("trained_on", 0))
        self.tuned = dict(state.get("tuned", {}))

    def tune_nprobe(self, queries: np.ndarray, truth: np.ndarray, k: int = 10,
                    target: float = TARGET_RECALL) -> float:
        """Set nprobe to the smallest power of two whose recall@k against ``truth`` ((nq, k) exact neighbour ids of
        ``queries``, which should not be vectors of the index) reaches ``target``, at most ``MAX_NPROBE``. Records the
        candidates' recalls in ``tuned`` and returns the recall reached."""
        nprobe, recall, tried = 1, 0.0, {}
        while True:
            self.nprobe = nprobe
            recall = recall_at_k(self.search(queries, k)[1], truth, k)
            tried[str(self.nprobe)] = round(float(recall), 4)
            if recall >= target or nprobe >= min(MAX_NPROBE, self.nlist):
                break
            nprobe *= 2
        self.tuned = {"tuned_recall_at_10": round(float(recall), 4), "tune_queries": int(len(queries)),
                      "tune_target": target, "tune_recalls": tried}
        return recall


# =================================================================== choosing, building, loading
BACKENDS: dict[str, type[VectorIndex]] = {"numpy": NumpyIndex, "flat": FlatIndex, "ivf": IVFIndex}


def choose_backend(n: int) -> str:
    """The backend the product uses for ``n`` vectors: exact while small, approximate above EXACT_MAX_VECTORS."""
    return "flat" if n <= EXACT_MAX_VECTORS else "ivf"


def ivf_lists(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: ~IVF_LISTS_PER_SQRT_N * sqrt(n), a power of two, at least the minimum."""
    target = max(IVF_MIN_LISTS, IVF_LISTS_PER_SQRT_N * math.sqrt(max(n, 1)))
    return int(2 ** round(math.log2(target)))


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each query's true top-k ids present in its found top-k."""
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        hits += len(np.intersect1d(f[f >= 0], t))
    return hits / max(1, truth[:, :k].size)


def build(ids: Any, vectors: Any, backend: str | None = None, seed: int = 0, nprobe: int | None = None) -> VectorIndex:
    """Build the index the product uses for these vectors (or the named ``backend``), trained and tuned.

    For IVF: k-means on a seeded sample, then nprobe tuned on ``TUNE_QUERIES`` of the index's own vectors against
    exact search (their own match excluded), unless ``nprobe`` is given.
    """
    ids = _as_ids(ids)
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim != 2:
        raise UserError(f"Vectors must be a 2-D array, got shape {tuple(vectors.shape)}")
    n, dim = vectors.shape
    backend = backend or choose_backend(n)
    if backend not in BACKENDS:
        raise UserError(f"Unknown index backend {backend!r}; available: {', '.join(BACKENDS)}")
    if backend != "ivf":
        index = BACKENDS[backend](dim)
        index.add(ids, vectors)
        return index
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    # Tuning queries are kept out of the k-means sample and out of the index until nprobe is chosen, so they are
    # searched as a new image is: no query finds itself, and its neighbours are the other vectors. Tuning on the
    # index's own vectors (their own match excluded) read 0.97 where new queries got 0.957 (bench/README.md).
    tune_rows = np.sort(perm[:min(TUNE_QUERIES, n // 10)]) if nprobe is None else np.empty(0, np.int64)
    nlist = min(ivf_lists(n), max(1, (n - len(tune_rows)) // 39))  # FAISS wants >= 39 training points per list
    index = IVFIndex(dim, nlist)
    train_rows = np.sort(perm[len(tune_rows):][:nlist * IVF_TRAIN_POINTS_PER_LIST])
    index.train(vectors[train_rows], seed=seed)
    if not len(tune_rows):
        index.add(ids, vectors)
        if nprobe is not None:
            index.nprobe = nprobe
        return index
    rest = np.ones(n, bool)
    rest[tune_rows] = False
    index.add(ids[rest], vectors[rest])
    truth = exact_topk(vectors[rest], ids[rest], vectors[tune_rows], 10)[1]
    index.tune_nprobe(vectors[tune_rows], truth, k=10)
    index.add(ids[tune_rows], vectors[tune_rows])
    return index


def exact_topk(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int,
               block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product, blockwise over the vectors so memory stays bounded (NumPy, BLAS threads)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.empty((len(queries), 0), np.int64)
    for start in range(0, len(vectors), block):
        sims = queries @ vectors[start:start + block].T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        s = np.concatenate([best_s, np.take_along_axis(sims, part, axis=1)], axis=1)
        i = np.concatenate([best_i, ids[start:start + block][part]], axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)
    return best_s, best_i


def load(path: str | os.PathLike) -> VectorIndex:
    """Read an index saved with ``VectorIndex.save``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Index file {path} not found; build the index again")
    with open(path, "rb") as fh:
        if fh.read(len(_MAGIC)) != _MAGIC:
            raise UserError(f"{path} is not a studio index file")
        (hlen,) = struct.unpack("<Q", _read_exact(fh, 8))
        header = json.loads(_read_exact(fh, hlen))
        (n,) = struct.unpack("<Q", _read_exact(fh, 8))
        ids = np.frombuffer(_read_exact(fh, n * 8), dtype=np.int64).copy()
        cls = BACKENDS.get(header.get("backend"))
        if cls is None:
            raise UserError(f"{path} holds an unknown index backend {header.get('backend')!r}")
        index = cls.__new__(cls)
        VectorIndex.__init__(index, int(header["dim"]))
        if isinstance(index, _FaissIndex):
            index._index = None
        index._read_payload(fh, ids)
        index._set_state(header.get("state") or {})
        index._ids = np.sort(ids)
    return index


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise UserError(f"Index file is truncated (wanted {n} bytes, got {len(data)}); rebuild the index")
    return data
