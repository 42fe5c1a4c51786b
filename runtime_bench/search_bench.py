"""Gallery search speed: exact (numpy) vs HNSW (faiss, extra ``skulens[index]``) by gallery size.

    python -m skulens.bench.search_bench --sizes 1000,10000,100000 --dim 256 --out runs/search_bench

Everything runs on one thread: the CLI re-runs itself in a child process with
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS = 1 (BLAS reads them when numpy loads),
and the HNSW graph is built and searched with one OpenMP thread. The vectors imitate product
galleries: a product every 5 entries, its photos a shared direction plus noise; the queries are
new views of enrolled products. Reported per size: median ms per single-image query (exact,
HNSW, measured interleaved), HNSW build seconds, HNSW recall@1 / @k against exact search, and
the time to enrol 5 photos into a ProductGallery of that size.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

import numpy as np

from ._files import write_result_files
from ._timing import interleaved_samples

log = logging.getLogger(__name__)
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
VIEWS_PER_PRODUCT = 5
NOISE = 0.6  # noise / signal per coordinate: same-product views at cosine ~0.7 (dim-independent)
TIMED_QUERIES = 100  # single-image queries timed per size (recall uses all ``queries``)


def gallery_like(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(entries [n, dim], queries [queries, dim]) float32 unit rows: ``VIEWS_PER_PRODUCT`` noisy
    views per product direction, the queries new noisy views of random enrolled products."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // VIEWS_PER_PRODUCT), dim)).astype(np.float32)
    x = centres[np.arange(n) % len(centres)] + NOISE * rng.standard_normal((n, dim)).astype(np.float32)
    q = centres[rng.integers(0, len(centres), queries)] + NOISE * rng.standard_normal((queries, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)


def _recall(got: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(recall@1, recall@k): top-1 agreement and the mean overlap of the top-k id sets."""
    k = truth.shape[1]
    at_k = np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(got, truth)])
    return float((got[:, 0] == truth[:, 0]).mean()), float(at_k)


def _query_medians_ms(indexes, q: np.ndarray, k: int) -> list[float]:
    """Median ms per single-image query of each index, the indexes interleaved query by query."""
    per_index: list[list[float]] = [[] for _ in indexes]
    for i in range(min(len(q), TIMED_QUERIES)):
        fns = [lambda ix=ix, qi=q[i:i + 1]: ix.search(qi, k) for ix in indexes]
        for acc, samples in zip(per_index, interleaved_samples(fns, rounds=1, iters=2, warmup=1)):
            acc.extend(samples)
    return [1e3 * float(np.median(s)) for s in per_index]


def _enrol_ms(x: np.ndarray, q: np.ndarray) -> float:
    """ms to append 5 photos to a ProductGallery holding ``x`` (after one warm-up append)."""
    from skulens import ProductGallery

    g = ProductGallery("bench", {"dim": x.shape[1], "output": "embedding"}, vectors=x,
                       entries=[{"label": f"p{i // VIEWS_PER_PRODUCT}", "image_sha256": str(i), "source": ""}
                                for i in range(len(x))])
    g.add_embeddings("warm-up", q[-1:], ["warm"], [""])  # the first append grows the buffer (one copy)
    t0 = time.perf_counter()
    g.add_embeddings("new product", q[:5], [f"new{i}" for i in range(5)], [""] * 5)
    return 1e3 * (time.perf_counter() - t0)


def search_benchmark(sizes=(1000, 10000, 100000), dim: int = 256, queries: int = 200, k: int = 5,
                     seed: int = 0) -> dict:
    """Per gallery size: exact and HNSW median query ms, HNSW build s and recall vs exact (see the
    module doc). One OpenMP thread for HNSW; BLAS threads are whatever this process has (the CLI
    pins them to 1). The HNSW figures are left out where faiss is not installed."""
    from skulens.internal import ExactIndex, HnswIndex, hnsw_available

    has_hnsw = hnsw_available()
    rows = []
    for n in sizes:
        x, q = gallery_like(int(n), dim, queries, seed)
        exact = ExactIndex(x)
        row: dict = {"entries": int(n), "dim": dim}
        truth = exact.search(q, k)[1]
        indexes = [exact]
        if has_hnsw:
            t0 = time.perf_counter()
            hnsw = HnswIndex(x, threads=1)
            row["hnsw_build_s"] = time.perf_counter() - t0
            row["hnsw_recall@1"], row[f"hnsw_recall@{k}"] = _recall(hnsw.search(q, k)[1], truth)
            indexes.append(hnsw)
        medians = _query_medians_ms(indexes, q, k)
        row["exact_query_ms"] = medians[0]
        if has_hnsw:
            row["hnsw_query_ms"] = medians[1]
        row["enrol_5_photos_ms"] = _enrol_ms(x, q)
        log.info("%s", row)
        rows.append(row)
    result = {"threads": 1, "k": k, "queries": queries, "timed_queries": min(queries, TIMED_QUERIES),
              "seed": seed, "views_per_product": VIEWS_PER_PRODUCT, "noise": NOISE,
              "blas_threads_env": {v: os.environ.get(v) for v in _THREAD_VARS}, "rows": rows}
    if has_hnsw:
        import faiss

        result["hnsw"] = {"library": "faiss-cpu", "version": faiss.__version__,
                          **{p: getattr(hnsw, p) for p in ("connectivity", "expansion_add", "expansion_search")}}
    return result


def markdown(result: dict) -> str:
    """The result as a Markdown table (``-`` where HNSW was not measured)."""
    k = result["k"]
    lines = [f"| entries | dim | exact query ms | HNSW query ms | HNSW build s | HNSW recall@1 | HNSW recall@{k} "
             "| enrol 5 photos ms |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        def h(key, fmt, r=r):
            return format(r[key], fmt) if key in r else "-"
        lines.append(f"| {r['entries']} | {r['dim']} | {r['exact_query_ms']:.3f} | {h('hnsw_query_ms', '.3f')} | "
                     f"{h('hnsw_build_s', '.2f')} | {h('hnsw_recall@1', '.3f')} | {h(f'hnsw_recall@{k}', '.3f')} | "
                     f"{r['enrol_5_photos_ms']:.2f} |")
    if "hnsw" in result:
        p = result["hnsw"]
        lines.append(f"\nHNSW: {p['library']} {p['version']}, M={p['connectivity']}, "
                     f"efConstruction={p['expansion_add']}, efSearch={p['expansion_search']}; one thread.")
    return "\n".join(lines) + "\n"


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=_sizes, default=[1000, 10000, 100000], help="gallery sizes, comma-separated")
    p.add_argument("--dim", type=int, default=256, help="embedding dimension (1280: Lite0's pooled features)")
    p.add_argument("--queries", type=int, default=200, help="queries per size (recall; up to 100 are timed)")
    p.add_argument("--k", type=int, default=5, help="neighbours per query (recall@k)")
    p.add_argument("--out", default="runs/search_bench", help="folder for search_bench.json / .md")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if any(os.environ.get(v) != "1" for v in _THREAD_VARS):  # pin BLAS to one thread, then rerun
        env = dict(os.environ, **{v: "1" for v in _THREAD_VARS})
        return subprocess.call([sys.executable, "-m", "skulens.bench.search_bench", *argv], env=env)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its SIMD-variant probing
    result = search_benchmark(args.sizes, args.dim, args.queries, args.k)
    table = markdown(result)
    for path in write_result_files(args.out, "search_bench", result, table, lambda *_: False):
        log.info("wrote %s", path)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
