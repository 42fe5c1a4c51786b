"""skulens ONNX classifier -> Triton Inference Server model repository.

    write_triton_repo("mine.int8.onnx", "triton_models")

writes ``triton_models/<name>/config.pbtxt``, ``triton_models/<name>/1/model.onnx`` (a copy) and
``triton_models/<name>/labels.txt``. The config takes its inputs and outputs (names, element
types, dims without the batch axis) from the ONNX graph, sets ``max_batch_size`` and
``dynamic_batching`` when the batch axis is dynamic, the onnxruntime backend's thread
parameters, and carries the skulens labels and preprocessing contract as ``skulens.*``
parameters so a client (``skulens.TritonClassifier``) can preprocess exactly as the SDK does.
Serve it with ``tritonserver --model-repository triton_models``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import logging
import re
import shutil
from pathlib import Path

import onnx

from skulens import ModelError
from skulens.internal import atomic_write, decode_metadata

log = logging.getLogger(__name__)

# ONNX TensorProto element type -> Triton model-config data type
_TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.INT8: "TYPE_INT8", onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32", onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.STRING: "TYPE_STRING",
}
LABELS_FILE = "labels.txt"


def triton_model_name(path) -> str:
    """A model-repository directory name from a file name: ``mine.int8.onnx`` -> ``mine_int8``."""
    stem = Path(path).name.removesuffix(".onnx")
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "model"


def _quote(text: str) -> str:
    """A protobuf text-format string literal (C escapes; non-ASCII as octal UTF-8 bytes)."""
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        if c in '"\\':
            out.append("\\" + c)
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _tensors(values, batched: bool) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        if t.elem_type not in _TRITON_TYPES:
            raise ModelError(f"tensor {v.name!r}: ONNX element type {t.elem_type} has no Triton equivalent")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        out.append({"name": v.name, "data_type": _TRITON_TYPES[t.elem_type], "dims": dims[1:] if batched else dims})
    return out


def _io(model: onnx.ModelProto) -> tuple[list[dict], list[dict], bool]:
    """Inputs, outputs and whether every input and output has a dynamic leading (batch) axis."""
    init = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in init]
    everything = inputs + list(model.graph.output)
    batched = all(len(v.type.tensor_type.shape.dim) >= 1 and not
                  v.type.tensor_type.shape.dim[0].HasField("dim_value") for v in everything)
    return _tensors(inputs, batched), _tensors(model.graph.output, batched), batched


def config_pbtxt(name: str, inputs: list[dict], outputs: list[dict], *, max_batch_size: int,
                 max_queue_delay_us: int, preferred_batch_sizes=(), instance_count: int = 1,
                 intra_op_threads: int = 0, inter_op_threads: int = 1, label_output: str | None = None,
                 parameters: dict | None = None) -> str:
    def tensor(t, labels=False):
        lines = [f"    name: {_quote(t['name'])}", f"    data_type: {t['data_type']}",
                 f"    dims: [ {', '.join(str(d) for d in t['dims'])} ]"]
        if labels:
            lines.append(f"    label_filename: {_quote(LABELS_FILE)}")
        return "  {\n" + "\n".join(lines) + "\n  }"

    text = [f"name: {_quote(name)}", 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size}",
            "input [\n" + ",\n".join(tensor(t) for t in inputs) + "\n]",
            "output [\n" + ",\n".join(tensor(t, t["name"] == label_output) for t in outputs) + "\n]"]
    if max_batch_size > 0:
        pref = "".join(f"\n  preferred_batch_size: {b}" for b in preferred_batch_sizes)
        text.append(f"dynamic_batching {{{pref}\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    text.append(f"instance_group [\n  {{\n    count: {instance_count}\n    kind: KIND_CPU\n  }}\n]")
    params = {"intra_op_thread_count": str(intra_op_threads), "inter_op_thread_count": str(inter_op_threads),
              "execution_mode": "0", **(parameters or {})}
    for key, value in params.items():
        text.append(f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {_quote(value)} }}\n}}")
    return "\n".join(text) + "\n"


def write_triton_repo(onnx_path, repo_dir, *, name: str | None = None, version: int = 1,
                      max_batch_size: int = 32, max_queue_delay_us: int = 2000, preferred_batch_sizes=(),
                      instance_count: int = 1, intra_op_threads: int = 0, inter_op_threads: int = 1) -> dict:
    """Write one model of a Triton repository from a skulens classifier; returns what was written."""
    onnx_path = Path(onnx_path)
    if max_batch_size < 1 or max_queue_delay_us < 0 or instance_count < 1 or version < 1:
        raise ValueError("max_batch_size, instance_count and version must be >= 1, max_queue_delay_us >= 0")
    model = onnx.load(str(onnx_path), load_external_data=False)
    meta = decode_metadata({p.key: p.value for p in model.metadata_props}, source=str(onnx_path))
    if meta.kind != "classifier":
        raise ModelError(f"{onnx_path}: a Triton repository is written for classifiers, this is a {meta.kind}")
    inputs, outputs, batched = _io(model)
    if not batched:
        log.warning("%s: the batch axis is fixed, so Triton cannot batch it (max_batch_size 0)", onnx_path)
        max_batch_size = 0
    n_out = outputs[0]["dims"][-1] if outputs[0]["dims"] else None
    if n_out not in (-1, len(meta.labels)):
        raise ModelError(f"{onnx_path}: {len(meta.labels)} labels but the output has {n_out} scores")
    if any("\n" in label for label in meta.labels):
        raise ModelError(f"{onnx_path}: a label contains a line break; it cannot go into {LABELS_FILE}")
    name = name or triton_model_name(onnx_path)
    root = Path(repo_dir) / name
    params = {"skulens.model_name": meta.model_name, "skulens.labels": json.dumps(list(meta.labels)),
              "skulens.preprocess": meta.preprocess.to_json()}
    text = config_pbtxt(name, inputs, outputs, max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                        preferred_batch_sizes=[b for b in preferred_batch_sizes if b <= max_batch_size],
                        instance_count=instance_count, intra_op_threads=intra_op_threads,
                        inter_op_threads=inter_op_threads, label_output=outputs[0]["name"], parameters=params)
    model_file = root / str(version) / "model.onnx"
    atomic_write(model_file, lambda tmp: shutil.copyfile(onnx_path, tmp))
    atomic_write(root / LABELS_FILE, lambda tmp: Path(tmp).write_text("\n".join(meta.labels) + "\n", encoding="utf-8"))
    atomic_write(root / "config.pbtxt", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    log.info("Triton model %s written to %s (serve: tritonserver --model-repository %s)", name, root, repo_dir)
    return {"name": name, "repository": str(Path(repo_dir)), "config": str(root / "config.pbtxt"),
            "model": str(model_file), "labels": str(root / LABELS_FILE), "max_batch_size": max_batch_size,
            "inputs": inputs, "outputs": outputs}


@functools.lru_cache(maxsize=None)
def model_config_pb2():
    """Triton's model-config protobuf module from ``tritonclient`` (skulens[triton]).

    It ships inside ``tritonclient.grpc``, whose package import needs grpcio; without grpcio the
    generated module file is loaded directly (it only needs protobuf)."""
    try:
        return importlib.import_module("tritonclient.grpc.model_config_pb2")
    except (ImportError, RuntimeError):
        spec = importlib.util.find_spec("tritonclient")
        if spec is None or not spec.submodule_search_locations:
            raise
        path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
        file_spec = importlib.util.spec_from_file_location("skulens_triton_model_config_pb2", path)
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
        return module
