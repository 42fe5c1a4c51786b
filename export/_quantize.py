"""fp32 ONNX -> INT8 ONNX with onnxruntime's own tooling: pre-processing pass (shape inference
+ graph optimisation), static QDQ quantization, per-channel weights, calibration on real
preprocessed images. The activation type (U8 or S8) can be chosen by timing both here.

The logits of a final Gemm stay float (see _float_gemm_outputs). A model with uint8 pixel
input (see export._input) keeps it: with U8 activations the pixels
are quantized with scale 1 and zero point 0, an identity, so the Cast and QuantizeLinear at
the input are removed and the first integer convolution reads the pixels directly (also through
the flip and concatenation of export._tta, which are kept exact on uint8).

Arithmetic on the pixels outside the network's convolutions (export._colour's histogram, and
the embedding tail it joins) can be left float: 8-bit steps would move its hue and saturation
bins.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quant_pre_process, quantize_static)

from skulens import ModelError
from skulens.internal import atomic_write, proc_bytes, time_models

from ._onnx import drop_unused_initializers

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
ACTIVATION_TYPES = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}


def _as_input(x: np.ndarray) -> np.ndarray:
    """A contiguous model input: uint8 pixels stay uint8, anything else becomes float32."""
    return np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32)


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
        return {self.input_name: _as_input(batch)}

    def rewind(self):
        self._i = 0


def quantize_int8(fp32_path, out_path, calibration_images: np.ndarray, *, activation_type: str = "u8",
                  calibrate_method: str = "minmax", per_channel: bool = True,
                  input_name: str = "input", work_dir=None, float_pixel_arithmetic: bool = False) -> Path:
    """Static QDQ INT8 quantization of ``fp32_path`` (metadata is not copied here); scratch
    files go to a temporary folder inside ``work_dir`` (default: the system's). With
    ``float_pixel_arithmetic``, the nodes that compute on the input image outside the network
    (:func:`_pixel_arithmetic`, an image classifier's colour histogram) are left float."""
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation_type must be one of {list(ACTIVATION_TYPES)}, got {activation_type!r}")
    if calibrate_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibrate_method must be one of {list(CALIBRATION_METHODS)}, got {calibrate_method!r}")
    if len(calibration_images) == 0:
        raise ValueError("calibration needs at least one image")
    extra = {"ActivationSymmetric": activation_type == "s8", "WeightSymmetric": True}
    if calibrate_method == "percentile":
        extra["CalibPercentile"] = 99.999
    with tempfile.TemporaryDirectory(prefix="skulens-quant-", dir=work_dir) as tmp:
        prep = os.path.join(tmp, "prep.onnx")
        quant_pre_process(str(fp32_path), prep, skip_symbolic_shape=True)
        if calibrate_method != "minmax":
            check_histogram_memory(prep, calibration_images, input_name, calibrate_method)
        pixels = _pixel_cast(onnx.load(prep)) if activation_type == "u8" else None
        float_nodes = _pixel_arithmetic(onnx.load(prep)) if float_pixel_arithmetic else None
        if pixels is not None:  # the cast uint8 pixels, and copies of them: quantized as they are
            identity = [{"scale": np.array(1.0, np.float32), "zero_point": np.array(0, np.uint8)}]
            extra["TensorQuantOverrides"] = {name: identity for name in
                                             [pixels.output[0], *_pixel_copies(onnx.load(prep), pixels.output[0])]}

        def write(dst):
            # histogram calibrators stack each tensor's per-batch outputs into one array: every batch
            # must have the same size, or a last, shorter batch fails inside onnxruntime
            batch = 16 if calibrate_method == "minmax" else 1
            reader = ArrayCalibrationReader(calibration_images, input_name, batch_size=batch)
            quantize_static(prep, dst, reader,
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=ACTIVATION_TYPES[activation_type],
                            weight_type=QuantType.QInt8,
                            calibrate_method=CALIBRATION_METHODS[calibrate_method],
                            nodes_to_exclude=float_nodes, extra_options=extra)
            model = onnx.load(dst)
            if pixels is not None:
                _drop_pixel_quantize(model, pixels.output[0])
            if _float_gemm_outputs(model) or pixels is not None:
                drop_unused_initializers(model.graph)
                onnx.save(model, dst)

        return atomic_write(out_path, write)


def check_histogram_memory(model_path, calibration_images, input_name: str, method: str,
                           available: int | None = None) -> int:
    """Refuse, before the long work, a histogram calibration that would not fit in memory.

    onnxruntime's entropy and percentile calibrators keep every activation of every calibration
    image until the histograms are built (minmax merges ranges as it goes): EfficientNet-Lite0 at
    240 px with the flip needs about 130 MB per image (33 GB for 256 images); such an export
    was killed by the kernel. One image is run through the model with every float tensor as an
    output; the total for all images is compared with the memory available now. Returns the
    bytes it expects."""
    model = onnx.shape_inference.infer_shapes(onnx.load(model_path))
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(vi for vi in model.graph.value_info
                              if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT and vi.name not in outputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    first = ArrayCalibrationReader(calibration_images, input_name, batch_size=1).get_next()
    per_image = sum(out.nbytes for out in session.run(None, first))
    n = len(next(iter(calibration_images.values()))) if isinstance(calibration_images, dict) else len(calibration_images)
    need = per_image * n
    available = _available_memory() if available is None else available
    if available and need > 0.6 * available:  # measured: ~2 GB more than the activations at peak
        fits = max(1, int(0.6 * available // per_image))
        raise ModelError(f"--calibrate-method {method} keeps every activation of every calibration image in memory: "
                         f"{per_image / 2**20:.0f} MB per image, {need / 2**30:.1f} GB for {n} images, more than this "
                         f"machine can spare ({available / 2**30:.1f} GB available). Use --calibration-size {fits} "
                         "or fewer, or --calibrate-method minmax (its memory does not grow with the images)")
    return need


def _available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux: MemAvailable), or None if unknown."""
    return proc_bytes("MemAvailable", "/proc/meminfo")


def _float_gemm_outputs(model: onnx.ModelProto) -> int:
    """Graph outputs written by Gemm -> QuantizeLinear -> DequantizeLinear come straight from
    the Gemm instead: onnxruntime then runs a QGemm with float output (one node fewer) and the
    logits keep full precision rather than 256 levels. Returns the number of outputs changed."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    changed = 0
    for out in graph.output:
        dq = producer.get(out.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        gemm = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if gemm is None or gemm.op_type != "Gemm":
            continue
        if sum(q.output[0] in n.input for n in graph.node) != 1 or sum(gemm.output[0] in n.input for n in graph.node) != 1:
            continue  # the quantized values are used elsewhere too
        gemm.output[0] = out.name
        graph.node.remove(q)
        graph.node.remove(dq)
        changed += 1
    return changed


def _pixel_cast(model: onnx.ModelProto):
    """The Cast to float of a uint8 graph input (reached through layout ops), or None."""
    graph = model.graph
    if len(graph.input) != 1 or graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        return None
    consumers: dict[str, list] = {}
    for node in graph.node:
        if node.op_type == "Shape":  # reads the tensor's shape, not its pixels
            continue
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    name = graph.input[0].name
    while len(consumers.get(name, [])) == 1:
        node = consumers[name][0]
        if node.op_type == "Cast":
            to = {a.name: a.i for a in node.attribute}.get("to")
            return node if to == onnx.TensorProto.FLOAT else None
        if node.op_type not in ("Transpose", "Reshape", "Identity"):
            return None
        name = node.output[0]
    return None


def _pixel_copies(model: onnx.ModelProto, pixels: str) -> list[str]:
    """Tensors that only rearrange the tensor ``pixels`` (slices, mirror images, concatenations,
    as in export._tta's flip): still integers 0..255, so quantizing them with scale 1 and zero
    point 0 keeps them exact, and onnxruntime runs those nodes on uint8."""
    copies, known = [], {pixels}
    for node in model.graph.node:  # in topological order
        if node.op_type == "Concat":
            data = list(node.input)
        elif node.op_type in ("Slice", "Transpose", "Reshape", "Identity"):
            data = list(node.input[:1])
        else:
            continue
        if all(name in known for name in data):
            known.add(node.output[0])
            copies.append(node.output[0])
    return copies


def _pixel_arithmetic(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute on the input pixels without passing through a
    convolution or matrix product (export._colour, and what joins its result), other than
    rearranging or padding them on their way into the network."""
    graph = model.graph
    reached = {i.name for i in graph.input}
    names = []
    for node in graph.node:  # in topological order
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Shape") or \
                not any(i in reached for i in node.input):
            continue  # (a Shape reads the sizes, not the pixels: export._tta splits its batch by it)
        reached.update(node.output)
        if node.op_type not in ("Cast", "Pad", "Slice", "Concat", "Transpose", "Reshape", "Identity") \
                or (node.op_type == "Concat" and not all(i in reached for i in node.input)):
            names.append(node.name)
    return names


def _drop_pixel_quantize(model: onnx.ModelProto, cast_output: str) -> None:
    """Remove Cast -> QuantizeLinear(scale 1, zero point 0, uint8) at the input: the uint8
    pixels feed the QuantizeLinear's consumers directly. RuntimeError if the pattern differs."""
    graph = model.graph
    init = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    cast = next((n for n in graph.node if n.op_type == "Cast" and n.output[0] == cast_output), None)
    users = [n for n in graph.node if cast_output in n.input]
    quants = [n for n in users if n.op_type == "QuantizeLinear"]
    if cast is None or len(quants) != 1:
        raise RuntimeError(f"uint8 input: expected Cast -> QuantizeLinear at {cast_output!r}")
    q = quants[0]
    scale, zero = init.get(q.input[1]), init.get(q.input[2]) if len(q.input) > 2 else None
    if scale is None or zero is None or zero.dtype != np.uint8 or float(scale) != 1.0 or int(zero) != 0:
        raise RuntimeError(f"uint8 input: the pixels were not quantized as they are "
                           f"(scale {scale}, zero point {zero})")
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == q.output[0]:
                node.input[k] = cast.input[0]
    graph.node.remove(q)
    gone = [q.output[0]]
    if len(users) == 1:  # else the float pixels still feed export._colour's arithmetic
        graph.node.remove(cast)
        gone.append(cast_output)
    for v in [v for v in graph.value_info if v.name in gone]:
        graph.value_info.remove(v)


def choose_activation_type(fp32_path, calibration_images: np.ndarray, *, calibrate_method: str = "minmax",
                           threads: int = 1, input_name: str = "input", work_dir=None,
                           float_pixel_arithmetic: bool = False) -> tuple[str, dict]:
    """Quantize with U8 and with S8 activations and keep the one faster on this CPU (batch 1)."""
    if calibrate_method != "minmax":  # before the timing work, for all the images to come
        check_histogram_memory(fp32_path, calibration_images, input_name, calibrate_method)
    with tempfile.TemporaryDirectory(prefix="skulens-actcheck-", dir=work_dir) as tmp:
        paths = {}
        for act in ACTIVATION_TYPES:
            paths[act] = quantize_int8(fp32_path, Path(tmp) / f"{act}.onnx", calibration_images[:32],
                                       activation_type=act, calibrate_method=calibrate_method,
                                       input_name=input_name, work_dir=tmp,
                                       float_pixel_arithmetic=float_pixel_arithmetic)
        x = _as_input(calibration_images[:1])
        u8, s8, fp32 = time_models([paths["u8"], paths["s8"], fp32_path], x, threads=threads)
    lat = {"u8": u8, "s8": s8}
    best = min(lat, key=lat.get)
    timings = {"u8_ms": round(u8 * 1e3, 4), "s8_ms": round(s8 * 1e3, 4), "fp32_ms": round(fp32 * 1e3, 4)}
    log.info("activation type check (batch 1, %d thread): %s -> %s", threads, timings, best)
    return best, timings
