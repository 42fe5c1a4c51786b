"""Opening an ONNX model with onnxruntime (or the optional OpenVINO backend) and reading its
skulens metadata."""
from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from ._errors import ModelError
from ._metadata import ModelMetadata, decode_metadata

# execution backends of the SDK's task objects; onnxruntime is the default and always installed
BACKENDS = ("onnxruntime", "openvino")


def session_options(num_threads: int = 0) -> ort.SessionOptions:
    """Sequential execution, ``num_threads`` intra-op threads (0 = onnxruntime's default)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0, got {num_threads}")
    so.intra_op_num_threads = int(num_threads)
    if num_threads == 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def check_backend(backend: str) -> str:
    """``backend`` if skulens can run models with it, else a ValueError listing the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)} "
                         "(openvino needs pip install 'skulens[openvino]')")
    return backend


def open_model(path, *, num_threads: int = 0, providers=None, expect_kind: str | None = None,
               backend: str = "onnxruntime") -> tuple[ort.InferenceSession, ModelMetadata]:
    """Load ``path`` into an InferenceSession and validate its skulens metadata.

    ``backend="openvino"`` compiles it with OpenVINO instead (``providers`` do not apply):
    an :class:`~._backend_openvino.OpenVinoSession`, which answers the same calls.
    Raises ModelError for a missing file, a file that is not (or no longer) a valid ONNX
    model, a model without skulens metadata, or a model of another kind; MissingExtraError
    when the backend's extra is not installed.
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty model file (0 bytes)")
    if check_backend(backend) == "openvino":
        from ._backend_openvino import open_openvino_model

        return open_openvino_model(path, num_threads=num_threads, expect_kind=expect_kind)
    available = ort.get_available_providers()
    providers = list(providers) if providers else ["CPUExecutionProvider"]
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise ModelError(f"{path}: execution providers {unknown} are not available here "
                         f"(available: {available})")
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(num_threads),
                                       providers=providers)
    except Exception as exc:  # onnxruntime raises several private exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a valid ONNX model or truncated file ({first[:300]})") from exc
    meta = decode_metadata(session.get_modelmeta().custom_metadata_map, source=str(path))
    if expect_kind is not None and meta.kind != expect_kind:
        raise ModelError(f"{path}: this is a {meta.kind} model, expected a {expect_kind}")
    return session, meta


class OnnxTask:
    """Lifecycle shared by the SDK's task objects: a context manager around one session."""

    _session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Release the model; later calls raise RuntimeError."""
        self._session = None

    def _require_open(self):
        if self._session is None:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        return self._session
