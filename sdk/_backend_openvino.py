"""OpenVINO as an optional execution backend: ``ClassifierOptions(backend="openvino")``.

OpenVINO reads our ONNX files directly (fp32, and the QDQ INT8 ones export writes, which it
runs with its own integer kernels) and keeps their ``metadata_props`` in the model's
``rt_info["framework"]``, so the skulens metadata (labels, preprocessing contract) comes from the
same file. :class:`OpenVinoSession` is the slice of ``onnxruntime.InferenceSession`` that
ImageClassifier uses (``get_inputs``, ``get_outputs``, ``run``), so every results API
(classify, classify_batch, logits, embeddings) is the same whichever backend runs the model.

Settings, made explicit so that results and behaviour match onnxruntime's: one stream, the
latency hint, ``num_threads`` inference threads (0 = OpenVINO's default: all cores), **f32
inference precision** (OpenVINO's CPU default on CPUs with AVX512-BF16 or AMX is bf16, whose
scores differ from onnxruntime's in the second or third digit) and **no CPU pinning** (OpenVINO
pins its threads by default; on a machine shared with other work, the application's own
decoding included, a pinned thread waits for its busy core: measured 2.9 ms instead of 1.0 ms
per call on a loaded 2-core machine; onnxruntime does not pin either).
Needs ``pip install 'skulens[openvino]'``.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ._errors import ModelError, require_extra
from ._metadata import ModelMetadata, decode_metadata

log = logging.getLogger(__name__)
DEVICE = "CPU"
# OpenVINO element type names -> the names onnxruntime gives (what ImageClassifier checks)
_ORT_TYPES = {"u8": "tensor(uint8)", "f32": "tensor(float)", "f16": "tensor(float16)", "i64": "tensor(int64)"}
_NUMPY_TYPES = {"u8": np.uint8, "f32": np.float32, "f16": np.float16, "i64": np.int64}


def openvino_config(num_threads: int = 0) -> dict:
    """The compile properties every skulens OpenVINO model gets (see the module doc)."""
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32",
              "ENABLE_CPU_PINNING": False}
    if num_threads:
        config["INFERENCE_NUM_THREADS"] = int(num_threads)
    return config


def _port(port) -> SimpleNamespace:
    """An OpenVINO input/output port as onnxruntime describes one: name, shape (a dynamic
    dimension is None), type."""
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    kind = port.get_element_type().get_type_name()
    return SimpleNamespace(name=port.get_any_name(), shape=shape, type=_ORT_TYPES.get(kind, f"openvino({kind})"),
                           dtype=_NUMPY_TYPES.get(kind))


class OpenVinoSession:
    """One compiled OpenVINO model behind onnxruntime's session interface.

    Each calling thread gets its own infer request (an OpenVINO request is not thread-safe;
    onnxruntime's ``run`` is), so a classifier can be shared by threads as with onnxruntime.
    """

    def __init__(self, path, num_threads: int = 0):
        ov = require_extra("openvino", "openvino")
        self.path = str(path)
        core = ov.Core()
        try:
            model = core.read_model(self.path)
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line C++ trace
            raise ModelError(f"{self.path}: OpenVINO cannot read this model ({_first_line(exc)})") from exc
        self._metadata = _metadata_props(model)
        try:
            self._compiled = core.compile_model(model, DEVICE, openvino_config(num_threads))
        except Exception as exc:
            raise ModelError(f"{self.path}: OpenVINO cannot compile this model ({_first_line(exc)})") from exc
        del model  # the compiled model keeps what it needs
        self._inputs = [_port(p) for p in self._compiled.inputs]
        self._outputs = [_port(p) for p in self._compiled.outputs]
        self._out_port = {o.name: port for o, port in zip(self._outputs, self._compiled.outputs)}
        self._local = threading.local()
        self.num_threads = int(self.settings()["INFERENCE_NUM_THREADS"])

    def settings(self) -> dict:
        """The compiled model's effective values of the properties :func:`openvino_config` sets."""
        keys = ["INFERENCE_NUM_THREADS", *openvino_config(1)]
        values = {k: self._compiled.get_property(k) for k in keys}
        return {k: v.get_type_name() if hasattr(v, "get_type_name") else v for k, v in values.items()}

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def metadata_props(self) -> dict[str, str]:
        """The ONNX file's ``metadata_props`` (what onnxruntime's custom_metadata_map holds)."""
        return dict(self._metadata)

    def _check(self, name: str, x: np.ndarray) -> None:
        """Refuse what onnxruntime refuses: OpenVINO silently converts a wrong dtype and runs
        a wrong static shape."""
        spec = next((i for i in self._inputs if i.name == name), None)
        if spec is None:
            raise ModelError(f"{self.path}: the model has no input {name!r} "
                             f"(inputs: {[i.name for i in self._inputs]})")
        bad_dims = len(x.shape) != len(spec.shape) or any(
            d is not None and d != n for d, n in zip(spec.shape, x.shape))
        if (spec.dtype is not None and x.dtype != spec.dtype) or bad_dims:
            want = "x".join("N" if d is None else str(d) for d in spec.shape)
            raise ModelError(f"{self.path}: input {name!r} takes {spec.type} [{want}], "
                             f"got {x.dtype} {tuple(x.shape)}")

    def run(self, output_names, feed: dict) -> list[np.ndarray]:
        """Like ``InferenceSession.run``: the arrays of ``output_names`` (None: all outputs)."""
        for name, x in feed.items():
            self._check(name, x)
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer({name: np.ascontiguousarray(x) for name, x in feed.items()})
        names = [o.name for o in self._outputs] if output_names is None else output_names
        try:
            return [result[self._out_port[n]] for n in names]
        except KeyError as exc:
            raise ModelError(f"{self.path}: the model has no output {exc.args[0]!r} "
                             f"(outputs: {list(self._out_port)})") from None

    def close(self) -> None:
        """Drop the compiled model (its memory is freed once no request is running)."""
        self._compiled = None
        self._local = threading.local()


def _metadata_props(model) -> dict[str, str]:
    """An ONNX file's ``metadata_props``, which OpenVINO keeps in ``rt_info["framework"]`` (IR
    written from such a model, NNCF's included, keeps them too)."""
    rt = model.get_rt_info()
    if "framework" not in rt:
        return {}
    return {k: model.get_rt_info(["framework", k]).astype(str) for k in rt["framework"]}


def _first_line(exc: Exception) -> str:
    """The informative line of an OpenVINO error (its C++ location lines come first)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from")]
    return (lines[0] if lines else type(exc).__name__)[:300]


def open_openvino_model(path, *, num_threads: int = 0,
                        expect_kind: str | None = None) -> tuple[OpenVinoSession, ModelMetadata]:
    """``open_model`` for the OpenVINO backend: the compiled model and its skulens metadata."""
    session = OpenVinoSession(Path(path), num_threads=num_threads)
    meta = decode_metadata(session.metadata_props(), source=str(path))
    if expect_kind is not None and meta.kind != expect_kind:
        raise ModelError(f"{path}: this is a {meta.kind} model, expected a {expect_kind}")
    log.debug("%s: OpenVINO %s, %d threads", path, DEVICE, session.num_threads)
    return session, meta
