"""Side-by-side latency measurement (torch-free; a torch model is timed only if one is given).

Every comparison is interleaved (A B C A B C ...) so drift on a shared, noisy machine hits
all contenders alike; each reports the median of per-round means.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np


def time_callables(fns: Sequence[Callable[[], object]], *, rounds: int = 5, iters: int = 20,
                   warmup: int = 3) -> list[float]:
    """Median seconds per call of each zero-argument callable, measured interleaved."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            samples[k].append((time.perf_counter() - t0) / iters)
    return [float(np.median(v)) for v in samples]


def ort_runner(path, x: np.ndarray, threads: int = 1) -> Callable[[], object]:
    import onnxruntime as ort

    from sdk._session import session_options

    sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)


def torch_runner(model, x: np.ndarray, threads: int = 1) -> Callable[[], object]:
    import torch

    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    model = model.eval()

    def run():
        with torch.inference_mode():
            return model(xt)

    return run


def time_models(paths: Sequence, x: np.ndarray, *, threads: int = 1, rounds: int = 5,
                iters: int = 20) -> list[float]:
    """Median model-only latency (seconds) of each ONNX file on input ``x``, interleaved."""
    return time_callables([ort_runner(p, x, threads) for p in paths], rounds=rounds, iters=iters)
