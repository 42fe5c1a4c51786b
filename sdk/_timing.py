"""Side-by-side latency measurement, torch-free (used by export to pick an INT8 scheme and by bench).

Every comparison is interleaved (A B C A B C ...) so drift on a shared, noisy machine hits
all contenders alike; each reports the median of per-round means.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished child processes (loader
    workers): on a shared machine, cpu_seconds / cores bounds what a job would take alone."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def interleaved_samples(fns: Sequence[Callable[[], object]], *, rounds: int = 5, iters: int = 20,
                        warmup: int = 3) -> list[list[float]]:
    """Per-call seconds of each zero-argument callable, all timed in one loop: each round runs
    ``iters`` calls of the first, then of the second, ..., so drift hits all of them alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                samples[k].append(time.perf_counter() - t0)
    return samples


def time_callables(fns: Sequence[Callable[[], object]], *, rounds: int = 5, iters: int = 20,
                   warmup: int = 3) -> list[float]:
    """Median over rounds of the mean seconds per call of each callable, measured interleaved."""
    samples = interleaved_samples(fns, rounds=rounds, iters=iters, warmup=warmup)
    return [float(np.median(np.asarray(v).reshape(rounds, iters).mean(axis=1))) for v in samples]


def ort_runner(path, x: np.ndarray, threads: int = 1) -> Callable[[], object]:
    import onnxruntime as ort

    from ._session import session_options

    sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)


def time_models(paths: Sequence, x: np.ndarray, *, threads: int = 1, rounds: int = 5,
                iters: int = 20) -> list[float]:
    """Median model-only latency (seconds) of each ONNX file on input ``x``, interleaved."""
    return time_callables([ort_runner(p, x, threads) for p in paths], rounds=rounds, iters=iters)
