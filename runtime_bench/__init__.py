"""runtime_bench: what to deploy, measured on this CPU (``skulens bench`` / ``python -m runtime_bench``).

Accuracy, latency percentiles, throughput, memory and size of the model under test beside its
peers (ORT fp32, ORT INT8 U8S8 / S8S8, PyTorch eager, OpenCV DNN), each configuration in a fresh
process, interleaved round by round. Names are imported lazily: ``runtime_bench._timing`` (used
by export) stays light, and nothing here imports torch except the PyTorch peer's own process.
"""
import importlib

__all__ = ["BenchConfig", "run_benchmark", "compare_with_baseline", "SCHEMA_VERSION"]
_WHERE = {"BenchConfig": "config", "run_benchmark": "_bench", "SCHEMA_VERSION": "_bench",
          "compare_with_baseline": "_report"}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'runtime_bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"runtime_bench.{_WHERE[name]}"), name)
