"""Latency statistics for ``skulens bench`` and the PyTorch runner; the interleaved timing loop
itself is the runtime's (``skulens.internal``), shared with export."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from skulens.internal import interleaved_samples, ort_runner, time_callables, time_models  # noqa: F401  (re-exported)


def torch_runner(model, x: np.ndarray, threads: int = 1) -> Callable[[], object]:
    import torch

    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    model = model.eval()

    def run():
        with torch.inference_mode():
            return model(xt)

    return run


# -- statistics of per-iteration samples (used by ``skulens bench``) --------------------------
PERCENTILES = (25, 50, 90, 99)
RATIO_PERCENTILE = 25  # per-round statistic that speedup ratios compare (see paired_speedup)
MIN_SAMPLES_P99 = 100  # fewer samples than this and p99 is just the maximum


def summarize(samples_s: Sequence[float], batch: int = 1) -> dict:
    """Latency statistics (milliseconds) and throughput (images/s) of per-iteration seconds."""
    a = np.asarray(samples_s, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples to summarize")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    p = np.percentile(a, PERCENTILES)
    mean = float(a.mean())
    out = {f"p{q}": float(v) * 1e3 for q, v in zip(PERCENTILES, p)}
    out.update(mean=mean * 1e3, std=float(a.std()) * 1e3, min=float(a.min()) * 1e3,
               max=float(a.max()) * 1e3, n=int(a.size), p99_reliable=bool(a.size >= MIN_SAMPLES_P99))
    return {"latency_ms": out, "throughput_ips": batch / mean if mean > 0 else float("inf")}


def paired_speedup(rounds_a: Sequence[Sequence[float]], rounds_b: Sequence[Sequence[float]],
                   q: float = RATIO_PERCENTILE) -> dict:
    """How many times faster A is than B, from interleaved rounds of samples.

    ``speedup``: B's ``q``-th percentile latency over A's, both pooled over all rounds (the
    rounds interleave A and B, so drift hits both alike); ``min``/``max``/``round_median``:
    the same ratio round by round, a measure of how steady the comparison was. The lower
    quartile rather than the median is compared so that iterations delayed by other processes
    (a busy machine preempts some of them, long iterations more often) do not decide the
    ratio; on an idle machine the two agree. ``speedup > 1``: A is faster.
    """
    pairs = [(a, b) for a, b in zip(rounds_a, rounds_b) if len(a) and len(b)]
    if not pairs:
        raise ValueError("no common rounds to compare")
    ratios = np.asarray([float(np.percentile(b, q)) / max(float(np.percentile(a, q)), 1e-12) for a, b in pairs])
    pooled_a = np.percentile(np.concatenate([np.asarray(a, float) for a, _ in pairs]), q)
    pooled_b = np.percentile(np.concatenate([np.asarray(b, float) for _, b in pairs]), q)
    return {"speedup": float(pooled_b / max(pooled_a, 1e-12)), "round_median": float(np.median(ratios)),
            "min": float(ratios.min()), "max": float(ratios.max()), "rounds": int(ratios.size), "percentile": q}
