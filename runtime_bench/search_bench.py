"""Gallery search speed: exact (numpy) vs HNSW (usearch) at 1 k, 10 k and 100 k entries.

    python -m runtime_bench.search_bench --sizes 1000,10000,100000 --dim 1280 --out runs/search_bench

One thread per query for both (the HNSW graph is built on all cores; BLAS threads are pinned before numpy loads, by re-running this module in
a child process with the thread variables set). The vectors imitate product galleries: a
product every 5 entries, its photos a shared direction plus noise; the queries are new views of
enrolled products. Reported per size: median ms per single-image query (exact, HNSW), HNSW
build seconds, HNSW recall@1 / @k against exact search, and the time to enrol 5 photos.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys

import numpy as np

from ._files import write_result_files
from ._timing import interleaved_samples

log = logging.getLogger(__name__)
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def gallery_like(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(entries [n, dim], queries [queries, dim]), unit rows: 5 views per product + new views."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 5), dim)).astype(np.float32)
    x = centres[np.arange(n) % len(centres)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    q = centres[rng.integers(0, len(centres), queries)] + 0.6 * rng.standard_normal((queries, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True))


def search_benchmark(sizes=(1000, 10000, 100000), dim: int = 256, queries: int = 200, k: int = 5,
                     seed: int = 0) -> dict:
    import time

    from sdk._gallery import ProductGallery
    from sdk._search import ExactIndex, HnswIndex, hnsw_available

    rows = []
    for n in sizes:
        x, q = gallery_like(n, dim, queries, seed)
        exact = ExactIndex(x)
        row = {"entries": n, "dim": dim}
        truth = exact.search(q, k)[1]
        fns = [lambda i=i: exact.search(q[i:i + 1], k) for i in range(min(queries, 50))]
        row["exact_query_ms"] = 1e3 * float(np.median(sum(interleaved_samples(fns, rounds=1, iters=3, warmup=1), [])))
        if hnsw_available():
            t0 = time.perf_counter()
            hnsw = HnswIndex(x, threads=1)
            row["hnsw_build_s"] = round(time.perf_counter() - t0, 2)
            got = hnsw.search(q, k)[1]
            row["hnsw_recall@1"] = float((got[:, 0] == truth[:, 0]).mean())
            row[f"hnsw_recall@{k}"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth)]))
            fns = [lambda i=i: hnsw.search(q[i:i + 1], k) for i in range(min(queries, 50))]
            row["hnsw_query_ms"] = 1e3 * float(np.median(sum(interleaved_samples(fns, rounds=1, iters=3, warmup=1), [])))
        g = ProductGallery("bench", {"dim": dim, "output": "embedding"}, vectors=x,
                           entries=[{"label": f"p{i // 5}", "image_sha256": str(i), "source": ""} for i in range(n)])
        g.add_embeddings("warm-up", q[-1:], ["warm"], [""])  # the first append grows the buffer (one copy)
        t0 = time.perf_counter()
        g.add_embeddings("new product", q[:5], [f"new{i}" for i in range(5)], [""] * 5)
        row["enrol_5_photos_ms"] = round(1e3 * (time.perf_counter() - t0), 3)
        log.info("%s", row)
        rows.append(row)
    return {"threads": 1, "k": k, "queries": queries, "rows": rows}


def markdown(result: dict) -> str:
    k = result["k"]
    lines = [f"| entries | dim | exact query ms | HNSW query ms | HNSW build s | HNSW recall@1 | HNSW recall@{k} | enrol 5 photos ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        h = lambda key, fmt: format(r[key], fmt) if key in r else "-"  # noqa: E731
        lines.append(f"| {r['entries']} | {r['dim']} | {r['exact_query_ms']:.3f} | {h('hnsw_query_ms', '.3f')} | "
                     f"{h('hnsw_build_s', '.1f')} | {h('hnsw_recall@1', '.3f')} | {h(f'hnsw_recall@{k}', '.3f')} | "
                     f"{r['enrol_5_photos_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="gallery sizes, comma-separated")
    p.add_argument("--dim", type=int, default=1280, help="embedding dimension (default: 1280, Lite0's)")
    p.add_argument("--queries", type=int, default=200, help="queries per size (recall)")
    p.add_argument("--out", default="runs/search_bench", help="folder for search_bench.json/.md")
    args = p.parse_args(argv)
    if any(os.environ.get(v) != "1" for v in _THREAD_VARS):  # pin BLAS to one thread, then rerun
        env = dict(os.environ, **{v: "1" for v in _THREAD_VARS})
        return subprocess.call([sys.executable, "-m", "runtime_bench.search_bench", *(argv or sys.argv[1:])], env=env)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = search_benchmark([int(s) for s in args.sizes.split(",")], args.dim, args.queries)
    write_result_files(args.out, "search_bench", result, markdown(result), lambda *_: False)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
