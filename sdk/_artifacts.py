"""Names of the files an export writes beside each other (one definition for export, bench and CLI).

``model.onnx`` (fp32) -> ``model.int8.onnx`` (INT8 that passed its gate),
``model.int8.rejected.onnx`` (INT8 that failed it, kept for inspection) and ``model.report.json``.
"""
from __future__ import annotations

from pathlib import Path


def int8_path_for(out) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".int8" + out.suffix)


def rejected_path_for(out) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".int8.rejected" + out.suffix)


def report_path_for(out) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".report.json")
