"""fp32 ONNX -> INT8 ONNX with onnxruntime's own tooling: pre-processing pass (shape inference
+ graph optimisation), static QDQ quantization, per-channel weights, calibration on real
preprocessed images. The activation type (U8 or S8) can be chosen by timing both here.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quant_pre_process, quantize_static)

from runtime_bench._timing import time_models
from sdk._io import atomic_write

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
ACTIVATION_TYPES = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed images [N, C, H, W] to the calibrator in small batches."""

    def __init__(self, images: np.ndarray, input_name: str = "input", batch_size: int = 16):
        self.images, self.input_name, self.batch_size = images, input_name, batch_size
        self._i = 0

    def get_next(self):
        if isinstance(self.images, dict):  # several named inputs, e.g. a generator's z and label
            n = len(next(iter(self.images.values())))
            batch = {k: np.ascontiguousarray(v[self._i:self._i + self.batch_size]) for k, v in self.images.items()}
            self._i += self.batch_size
            return batch if self._i - self.batch_size < n else None
        if self._i >= len(self.images):
            return None
        batch = self.images[self._i:self._i + self.batch_size]
        self._i += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self):
        self._i = 0


def quantize_int8(fp32_path, out_path, calibration_images: np.ndarray, *, activation_type: str = "u8",
                  calibrate_method: str = "minmax", per_channel: bool = True,
                  input_name: str = "input") -> Path:
    """Static QDQ INT8 quantization of ``fp32_path`` (metadata is not copied here)."""
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation_type must be one of {list(ACTIVATION_TYPES)}, got {activation_type!r}")
    if calibrate_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibrate_method must be one of {list(CALIBRATION_METHODS)}, got {calibrate_method!r}")
    if len(calibration_images) == 0:
        raise ValueError("calibration needs at least one image")
    extra = {"ActivationSymmetric": activation_type == "s8", "WeightSymmetric": True}
    if calibrate_method == "percentile":
        extra["CalibPercentile"] = 99.999
    with tempfile.TemporaryDirectory(prefix="skulens-quant-") as tmp:
        prep = os.path.join(tmp, "prep.onnx")
        quant_pre_process(str(fp32_path), prep, skip_symbolic_shape=True)

        def write(dst):
            quantize_static(prep, dst, ArrayCalibrationReader(calibration_images, input_name),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=ACTIVATION_TYPES[activation_type],
                            weight_type=QuantType.QInt8,
                            calibrate_method=CALIBRATION_METHODS[calibrate_method],
                            extra_options=extra)

        return atomic_write(out_path, write)


def choose_activation_type(fp32_path, calibration_images: np.ndarray, *, calibrate_method: str = "minmax",
                           threads: int = 1, input_name: str = "input") -> tuple[str, dict]:
    """Quantize with U8 and with S8 activations and keep the one faster on this CPU (batch 1)."""
    with tempfile.TemporaryDirectory(prefix="skulens-actcheck-") as tmp:
        paths = {}
        for act in ACTIVATION_TYPES:
            paths[act] = quantize_int8(fp32_path, Path(tmp) / f"{act}.onnx", calibration_images[:32],
                                       activation_type=act, calibrate_method=calibrate_method,
                                       input_name=input_name)
        x = np.ascontiguousarray(calibration_images[:1], dtype=np.float32)
        u8, s8, fp32 = time_models([paths["u8"], paths["s8"], fp32_path], x, threads=threads)
    lat = {"u8": u8, "s8": s8}
    best = min(lat, key=lat.get)
    timings = {"u8_ms": round(u8 * 1e3, 4), "s8_ms": round(s8 * 1e3, 4), "fp32_ms": round(fp32 * 1e3, 4)}
    log.info("activation type check (batch 1, %d thread): %s -> %s", threads, timings, best)
    return best, timings
