"""skulens.bench: what to deploy, measured on this CPU (``skulens bench``).

Accuracy, latency percentiles, throughput, memory and size of the model under test beside its
peers (ORT fp32, ORT INT8 U8S8 / S8S8, PyTorch eager, OpenCV DNN), each configuration in a fresh
process, interleaved round by round. Names are imported lazily; nothing here imports torch
except the PyTorch peer's own process.
"""
from skulens.internal import lazy_exports

__all__ = ["BenchConfig", "run_benchmark", "compare_with_baseline", "SCHEMA_VERSION"]
__getattr__ = lazy_exports(__name__, {"BenchConfig": "config", "run_benchmark": "_bench", "SCHEMA_VERSION": "_bench",
                                      "compare_with_baseline": "_report"},
                           extra="all", deps=("torch", "onnx", "matplotlib"))
