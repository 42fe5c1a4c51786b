"""Nearest-neighbour search over a product gallery's unit vectors (cosine = inner product).

- :class:`ExactIndex`: numpy, blocked matrix products; exact, no build cost. Right for edge-size
  galleries (a shop's few thousand products) and the reference the approximate index is checked
  against.
- :class:`HnswIndex`: an HNSW graph from ``faiss-cpu`` (extra ``skulens[index]``, imported only
  when used) for large catalogues: a query visits a small part of the gallery instead of all of it.
- :func:`build_index` picks one: ``"exact"``, ``"hnsw"`` or ``"auto"`` (HNSW from
  ``AUTO_HNSW_FROM`` entries when faiss is installed, else exact).

Why faiss-cpu rather than usearch, measured on a shared 2-core x86 box: one thread, batch-1
queries, clustered unit vectors (5 views per product + noise), recall against ExactIndex.
At 100 k x 256 with the same graph settings (M 16, efConstruction 128, efSearch 128) faiss built
in 75 s and answered in 0.78 ms, usearch in 133 s and 1.79 ms, both at recall@1 1.000 (exact
numpy: 13.5 ms). At 10 k x 1280 faiss (M 32, efC 40) built in 6.0 s vs usearch 19.7 s, queries
2.0 vs 2.6 ms at efSearch 128. Size: faiss-cpu is one 18.8 MB wheel needing numpy (+ packaging);
usearch is 2.3 MB but pulls numkong (10.6 MB) and tqdm, 13 MB in all, so the gap is small.
Defaults: at 100 k x 1280, efConstruction 40 reached recall@1 0.985 at efSearch 128 (3.3 ms) and
0.995 at 192 (4.4 ms); efConstruction 80 reached 1.000 from efSearch 96 on (3.4 ms at 128) for
twice the build (270 s on one thread, 87 s at 256-d), so the defaults are M 32, efConstruction
80, efSearch 128 (``python -m skulens.bench.search_bench`` measures them). faiss draws HNSW levels
from a fixed seed: a one-thread build of the same vectors gives the same graph and answers.
"""
from __future__ import annotations

import numpy as np

from ._errors import MissingExtraError

# "auto" uses HNSW from this many entries; exact grows ~linearly (10 k: 1-2 ms at 256-d, 4 ms at 1280-d)
AUTO_HNSW_FROM = 20_000
BACKENDS = ("auto", "exact", "hnsw")
_INDEX_EXTRA = "pip install 'skulens[index]'"
_BLOCK_ELEMENTS = 1 << 22  # similarity block [queries, entries] held at once: 4 Mi floats, 16 MiB


def _as_rows(x, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 [N, D] copy-if-needed, or ValueError naming the problem."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [N, D], got {x.ndim}-D shape {x.shape}")
    if x.dtype.kind != "f":
        raise ValueError(f"{what} must be a floating-point array (float32), got dtype {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError(f"{what} have dimension 0, shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x


def _gallery_rows(vectors) -> np.ndarray:
    x = _as_rows(vectors, "index vectors")
    if len(x) == 0:
        raise ValueError("cannot index an empty gallery (0 vectors)")
    return x


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_queries(queries, dim: int) -> np.ndarray:
    q = _as_rows(queries, "queries")
    if q.shape[1] != dim:
        raise ValueError(f"queries have dimension {q.shape[1]} but the index holds dimension {dim}")
    return q


def _sort_hits(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best ``k`` by descending score, ties to the lower id (id -1: a missing hit, last)."""
    missing = ids < 0
    order = np.lexsort((np.where(missing, np.iinfo(np.int64).max, ids),
                        np.where(missing, np.inf, -scores.astype(np.float64))), axis=1)[:, :k]
    return (np.take_along_axis(scores, order, 1).astype(np.float32, copy=False),
            np.take_along_axis(ids, order, 1).astype(np.int64, copy=False))


def _block_top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-row top ``k`` of a similarity block, ties at the cut going to the lower column:
    (scores [R, k], columns [R, k]), columns ascending within a row (unsorted by score)."""
    rows, cols = sims.shape
    if k >= cols:
        return sims, np.broadcast_to(np.arange(cols, dtype=np.int64), sims.shape)
    cut = np.partition(sims, cols - k, axis=1)[:, cols - k:cols - k + 1]  # k-th largest per row
    above = sims > cut
    tied = sims == cut
    room = k - above.sum(axis=1, keepdims=True)  # how many tied entries still fit, lowest first
    keep = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= room))
    c = np.nonzero(keep)[1]  # exactly k per row, row-major
    c = c.reshape(rows, k)
    return np.take_along_axis(sims, c, 1), c.astype(np.int64)


class ExactIndex:
    """Exact top-k by inner product over a read-only copy of ``vectors`` [N, D] float32.

    ``search`` holds about ``block_elements`` similarities at a time (queries x entries; at
    least k per query), so memory stays bounded for many queries against a large gallery.
    """

    backend = "exact"

    def __init__(self, vectors, block_elements: int = _BLOCK_ELEMENTS):
        x = _gallery_rows(vectors)
        if isinstance(vectors, np.ndarray) and np.may_share_memory(x, vectors):
            x = x.copy()  # the index keeps its own copy: later edits of ``vectors`` do not leak in
        x.flags.writeable = False
        self.vectors = x
        if isinstance(block_elements, bool) or not isinstance(block_elements, (int, np.integer)) \
                or block_elements < 1:
            raise ValueError(f"block_elements must be a positive integer, got {block_elements!r}")
        self.block_elements = int(block_elements)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k'] float32, ids [Q, k'] int64), k' = min(k, N): best first, ties to the
        lower id."""
        k = _check_k(k)
        q = _check_queries(queries, self.dim)
        n = len(self)
        k = min(k, n)
        span = min(n, max(k, self.block_elements))  # entries per block (at least k: one cut each)
        q_step = max(1, self.block_elements // span)
        out_s = np.empty((len(q), k), np.float32)
        out_i = np.empty((len(q), k), np.int64)
        for q0 in range(0, len(q), q_step):
            qb = q[q0:q0 + q_step]
            parts_s, parts_i = [], []
            for e0 in range(0, n, span):
                s, c = _block_top_k(qb @ self.vectors[e0:e0 + span].T, k)
                parts_s.append(s)
                parts_i.append(c + e0)
            out_s[q0:q0 + q_step], out_i[q0:q0 + q_step] = _sort_hits(
                np.concatenate(parts_s, 1), np.concatenate(parts_i, 1), k)
        return out_s, out_i


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise MissingExtraError(f"HNSW search needs faiss (package faiss-cpu), which is not installed: "
                                f"{_INDEX_EXTRA}") from None
    return faiss


def hnsw_available() -> bool:
    """Whether the HNSW backend's library (faiss) can be imported."""
    try:
        _import_faiss()
    except MissingExtraError:
        return False
    return True


class HnswIndex:
    """Approximate top-k by inner product: a faiss HNSW graph (``IndexHNSWFlat``) over ``vectors``.

    ``connectivity``: graph neighbours per node (faiss M); ``expansion_add``: candidate list while
    building (efConstruction); ``expansion_search``: candidate list per query (efSearch, raised
    to k when smaller); ``threads``: OpenMP threads per search call; ``build_threads``: for the
    build (default: ``threads``). faiss's thread count is process-wide; it is set before each
    call. With one build thread the same vectors give the same graph and the same answers; a
    parallel build is faster but may link nodes differently from run to run. A query may find
    fewer than k' hits on a degenerate graph: such slots hold id -1 and score -inf.
    """

    backend = "faiss"

    def __init__(self, vectors, connectivity: int = 32, expansion_add: int = 80,
                 expansion_search: int = 128, threads: int = 1, build_threads: int | None = None):
        faiss = _import_faiss()
        build_threads = threads if build_threads is None else build_threads
        for name, value in (("connectivity", connectivity), ("expansion_add", expansion_add),
                            ("expansion_search", expansion_search), ("threads", threads),
                            ("build_threads", build_threads)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        x = _gallery_rows(vectors)
        self._faiss = faiss
        self.dim, self._n = int(x.shape[1]), len(x)
        self.connectivity, self.expansion_add = int(connectivity), int(expansion_add)
        self.expansion_search, self.threads = int(expansion_search), int(threads)
        self.build_threads = int(build_threads)
        self._index = faiss.IndexHNSWFlat(self.dim, self.connectivity, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = self.expansion_add
        faiss.omp_set_num_threads(self.build_threads)
        self._index.add(x)

    def __len__(self) -> int:
        return self._n

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k'] float32, ids [Q, k'] int64), k' = min(k, N), best first (see class doc)."""
        k = _check_k(k)
        q = _check_queries(queries, self.dim)
        k = min(k, self._n)
        params = self._faiss.SearchParametersHNSW(efSearch=max(self.expansion_search, k))
        self._faiss.omp_set_num_threads(self.threads)
        scores, ids = self._index.search(q, k, params=params)
        ids = ids.astype(np.int64, copy=False)
        return _sort_hits(np.where(ids >= 0, scores, -np.inf).astype(np.float32), ids, k)


_EXACT_OPTIONS = ("block_elements",)
_HNSW_OPTIONS = ("connectivity", "expansion_add", "expansion_search", "threads", "build_threads")


def build_index(vectors, backend: str = "auto", **kw):
    """An index over ``vectors`` [N, D] float32: ``"exact"`` (:class:`ExactIndex`), ``"hnsw"``
    (:class:`HnswIndex`; MissingExtraError without faiss) or ``"auto"`` (HNSW from
    ``AUTO_HNSW_FROM`` entries when faiss is installed, else exact; ``kw`` options of the
    backend not chosen are ignored). ``kw`` go to the chosen class."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        unknown = sorted(set(kw) - set(_EXACT_OPTIONS) - set(_HNSW_OPTIONS))
        if unknown:
            raise ValueError(f"unknown index options {unknown}; known: {_EXACT_OPTIONS + _HNSW_OPTIONS}")
        n = len(vectors) if hasattr(vectors, "__len__") else 0
        backend = "hnsw" if n >= AUTO_HNSW_FROM and hnsw_available() else "exact"
        keep = _HNSW_OPTIONS if backend == "hnsw" else _EXACT_OPTIONS
        kw = {key: v for key, v in kw.items() if key in keep}
    return HnswIndex(vectors, **kw) if backend == "hnsw" else ExactIndex(vectors, **kw)
