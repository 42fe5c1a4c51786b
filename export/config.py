"""Export options (torch-free, so the CLI can build its flags without importing torch).
Field names are exactly the keyword arguments of :func:`export.export_classifier`, except
``triton_repo``, which the CLI handles after the export (export._triton.write_triton_repo)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ExportConfig:
    checkpoint: str
    out: str = "model.onnx"
    int8: bool = False
    data: str | None = None             # calibration/evaluation data (default: the training data)
    calibration_size: int = 256
    activation_type: Literal["auto", "u8", "s8"] = "auto"  # "auto": time U8 and S8 here
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    eval_split: str = "test"
    eval_limit: int | None = None
    opset: int = 18
    threads: int = 0
    input_dtype: Literal["auto", "float32", "uint8"] = "auto"  # "auto": uint8 pixels where exact
    embedding: bool = True              # a second output: the L2-normalised embedding for galleries
    embedding_dim: int = 0              # 0: the pooled features; N: projected to N principal directions
    unknown_precision: float = 0.95     # softmax "unknown" threshold chosen on val for this precision (0: none)
    triton_repo: str | None = None      # also write a Triton model repository here (CLI only)
