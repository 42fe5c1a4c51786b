"""Nearest-neighbour search over unit vectors (cosine similarity = inner product).

- :class:`ExactIndex`: numpy, a chunked matrix product; exact, no build cost, what edge-size
  galleries (a shop's few thousand products) need.
- :class:`HnswIndex`: an HNSW graph from ``usearch`` (extra ``skulens[index]``) for large
  catalogues: a query visits a few hundred vectors instead of all of them. usearch was chosen
  over faiss-cpu as a 2.3 MB wheel (faiss: 18.8 MB) with a plain numpy API; the measured
  figures (``python -m runtime_bench.search_bench``) are in the README.

``build_index(vectors, backend)`` picks one: "exact", "hnsw" or "auto" (HNSW from
``AUTO_HNSW_FROM`` vectors where usearch is installed, else exact).
"""
from __future__ import annotations

import numpy as np

from ._errors import MissingExtraError

AUTO_HNSW_FROM = 20_000
BACKENDS = ("auto", "exact", "hnsw")


def _unit_rows(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{what} must be a 2-D array [N, D], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must be floating point, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x


class ExactIndex:
    """Exact top-k by inner product; ties go to the lower id."""

    backend = "exact"

    def __init__(self, vectors, chunk: int = 65536):
        self.vectors = _unit_rows(vectors, "index vectors")
        if not len(self.vectors):
            raise ValueError("cannot index an empty set of vectors")
        self.dim, self.chunk = self.vectors.shape[1], chunk

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k'], ids [Q, k']) with k' = min(k, N), best first."""
        q = _check_queries(queries, k, self.dim)
        k = min(k, len(self))
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.zeros((len(q), 0), np.int64)
        for start in range(0, len(self), self.chunk):  # bounded memory: [Q, chunk] at a time
            sims = q @ self.vectors[start:start + self.chunk].T
            kk = min(k, sims.shape[1])
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < sims.shape[1] else \
                np.broadcast_to(np.arange(sims.shape[1]), sims.shape).copy()
            best_s = np.concatenate([best_s, np.take_along_axis(sims, part, 1)], 1)
            best_i = np.concatenate([best_i, part + start], 1)
        order = np.lexsort((best_i, -best_s), axis=1)[:, :k]  # score descending, then id ascending
        return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


class HnswIndex:
    """Approximate top-k with usearch's HNSW graph (inner product on unit vectors)."""

    backend = "usearch"

    def __init__(self, vectors, connectivity: int = 16, expansion_add: int = 64,
                 expansion_search: int = 128, threads: int = 1, build_threads: int = 0):
        """``threads`` per search call; ``build_threads`` for building (0: all cores)."""
        try:
            from usearch.index import Index
        except ImportError:
            raise MissingExtraError("HNSW search needs usearch: pip install 'skulens[index]'") from None
        vectors = _unit_rows(vectors, "index vectors")
        if not len(vectors):
            raise ValueError("cannot index an empty set of vectors")
        self.dim, self.threads, self._n = vectors.shape[1], threads, len(vectors)
        self._index = Index(ndim=self.dim, metric="ip", dtype="f32", connectivity=connectivity,
                            expansion_add=expansion_add, expansion_search=expansion_search)
        self._index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=build_threads)

    def __len__(self) -> int:
        return self._n

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _check_queries(queries, k, self.dim)
        k = min(k, self._n)
        m = self._index.search(q, k, threads=self.threads)
        keys = np.asarray(m.keys, dtype=np.int64).reshape(len(q), -1)[:, :k]
        dist = np.asarray(m.distances, dtype=np.float32).reshape(len(q), -1)[:, :k]
        # usearch's "ip" distance is 1 - <q, v>; a missing hit comes back with an invalid key
        keys = np.where((keys >= 0) & (keys < self._n), keys, -1)
        scores = np.where(keys >= 0, 1.0 - dist, -np.inf).astype(np.float32)
        return scores, keys


def _check_queries(queries, k, dim) -> np.ndarray:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    q = _unit_rows(queries, "queries")
    if q.shape[1] != dim:
        raise ValueError(f"queries have dimension {q.shape[1]}, the index {dim}")
    return q


def hnsw_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("usearch") is not None


def build_index(vectors, backend: str = "auto", **kw):
    """An index over ``vectors`` [N, D] (see the module doc for the backends)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "hnsw" if len(vectors) >= AUTO_HNSW_FROM and hnsw_available() else "exact"
    return HnswIndex(vectors, **kw) if backend == "hnsw" else ExactIndex(vectors, **kw)
