"""torch -> ONNX: one self-contained file, dynamic batch axis only, checked by onnx.checker."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from skulens.internal import ModelMetadata, atomic_write, encode_metadata, sha256_file

from .config import DEFAULT_OPSET

log = logging.getLogger(__name__)


def torch_to_onnx(model: torch.nn.Module, example_inputs: tuple, path, *, input_names=("input",),
                  output_names=("logits",), opset: int = DEFAULT_OPSET,
                  dynamic_batch: bool = True) -> Path:
    """Export ``model`` (eval mode) to ``path``; only axis 0 of every input is dynamic."""
    model = model.eval()
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)

    def write(tmp):
        # The exporter prints progress lines, warns that torchvision ops are unavailable and
        # raises a torch-internal FutureWarning; none of it concerns the user.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet("torch.onnx"):
            warnings.filterwarnings("ignore", message=r".*treespec.*", category=FutureWarning)
            torch.onnx.export(model, tuple(example_inputs), tmp, dynamo=True, external_data=False,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_shapes=dynamic_shapes, opset_version=opset, optimize=True,
                              verbose=False)
        model_proto = onnx.load(tmp)
        if _global_average_pool(model_proto):
            onnx.save(model_proto, tmp)
        onnx.checker.check_model(onnx.load(tmp), full_check=True)

    return atomic_write(path, write)


def _global_average_pool(model: onnx.ModelProto) -> int:
    """Rewrite in place each ReduceMean over the two spatial axes of a 4-D tensor, with
    keepdims, as GlobalAveragePool (what ``AdaptiveAvgPool2d(1)`` means; the exporter writes
    ReduceMean). onnxruntime quantizes GlobalAveragePool into an NHWC integer kernel, while a
    ReduceMean falls back to float between a DequantizeLinear and a QuantizeLinear, behind a
    transpose back to NCHW. Returns the number of nodes rewritten."""
    graph = model.graph
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in list(inferred.value_info) + list(inferred.input)}
    rewritten = 0
    for i, node in enumerate(graph.node):
        if node.op_type != "ReduceMean" or len(node.input) != 2 or rank.get(node.input[0]) != 4:
            continue
        keepdims = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}.get("keepdims", 1)
        axes = consts.get(node.input[1])
        if keepdims != 1 or axes is None or {int(a) % 4 for a in np.ravel(axes)} != {2, 3}:
            continue
        graph.node[i].CopyFrom(onnx.helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output),
                                                     name=node.name or f"global_average_pool_{i}"))
        rewritten += 1
    if rewritten:  # the axes tensors nothing reads any more
        drop_unused_initializers(graph)
    return rewritten


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def write_metadata(path, meta: ModelMetadata, out=None) -> Path:
    """Replace the skulens metadata of the ONNX file at ``path`` (written to ``out`` or in place)."""
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props if not p.key.startswith("skulens.")}
    props.update(encode_metadata(meta))
    del model.metadata_props[:]
    for k, v in sorted(props.items()):
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "skulens"
    return atomic_write(out or path, lambda tmp: onnx.save(model, tmp))


def read_metadata_props(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def io_spec(path) -> dict:
    """Input/output names, shapes (batch axis as its name) and element types of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)

    def spec(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [spec(v) for v in model.graph.input], "outputs": [spec(v) for v in model.graph.output]}


def parity(model: torch.nn.Module, onnx_path, inputs: np.ndarray, input_name: str = "input",
           onnx_inputs: np.ndarray | None = None) -> float:
    """Max |torch - onnxruntime| over the outputs for ``inputs`` (a preprocessed batch); the
    ONNX model gets ``onnx_inputs`` instead where its contract differs (the same images)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(inputs)).numpy()
    got = sess.run(None, {input_name: inputs if onnx_inputs is None else onnx_inputs})[0]
    return float(np.abs(ref - got).max())


def file_size(path) -> int:
    return os.path.getsize(path)
