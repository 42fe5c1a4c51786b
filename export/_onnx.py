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

from sdk._metadata import ModelMetadata, encode_metadata
from sdk._io import atomic_write, sha256_file  # noqa: F401  (sha256_file re-exported)

log = logging.getLogger(__name__)
DEFAULT_OPSET = 18


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
        onnx.checker.check_model(onnx.load(tmp), full_check=True)

    return atomic_write(path, write)


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


def parity(model: torch.nn.Module, onnx_path, inputs: np.ndarray, input_name: str = "input") -> float:
    """Max |torch - onnxruntime| over the outputs for ``inputs`` (a preprocessed batch)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(inputs)).numpy()
    got = sess.run(None, {input_name: inputs})[0]
    return float(np.abs(ref - got).max())


def file_size(path) -> int:
    return os.path.getsize(path)
