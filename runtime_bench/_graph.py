"""Looking inside a model: MACs counted from the ONNX graph, op types after onnxruntime's
optimisation (did the QDQ pairs fuse into integer kernels?), and onnxruntime's profiler.

Needs the ``onnx`` package (``skulens[export]``) for the graph walks; every function raises
MissingExtraError without it, and the benchmark then leaves that part out.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from skulens import MissingExtraError

from skulens.internal import require_extra
_CONV_OPS = {"Conv", "ConvInteger", "QLinearConv", "FusedConv", "NhwcFusedConv", "QLinearConvTranspose"}
_MATMUL_OPS = {"Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedGemm", "FusedMatMul",
               "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm"}


def _onnx():
    return require_extra("onnx", "export")


def _shapes(model) -> dict[str, list]:
    """Static shapes of every value (batch fixed to 1), from initializers and shape inference."""
    onnx = _onnx()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    init_names = {i.name for i in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in init_names:
            continue
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {i.name: list(i.dims) for i in m.graph.initializer}
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.dim_value else None for d in dims]
    return shapes


def count_macs(path) -> dict:
    """Multiply-accumulates of one image through the ONNX file at ``path``.

    Conv: output elements x (input channels / group) x kernel area; Gemm/MatMul: M x N x K.
    QDQ models are counted like their float originals (the Conv/Gemm nodes are still there).
    """
    onnx = _onnx()
    model = onnx.load(str(path), load_external_data=False)
    shapes = _shapes(model)
    by_op: Counter = Counter()
    unknown = []
    for node in model.graph.node:
        if node.op_type in _CONV_OPS:
            w_index = 3 if node.op_type.startswith("QLinear") else 1
            w, out = shapes.get(node.input[w_index]), shapes.get(node.output[0])
            if not w or not out or None in out or None in w:
                unknown.append(node.name or node.op_type)
                continue
            # weight [M, C/group, kH, kW]: each output element needs C/group * kH * kW MACs
            by_op[node.op_type] += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in _MATMUL_OPS:
            a_index, b_index = (0, 3) if node.op_type.startswith("QLinear") else (0, 1)
            a, b = shapes.get(node.input[a_index]), shapes.get(node.input[b_index])
            out = shapes.get(node.output[0])
            if not a or not b or not out or None in out or None in a:
                unknown.append(node.name or node.op_type)
                continue
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a else a[-1]
            by_op[node.op_type] += int(np.prod(out)) * int(k)
    return {"macs": int(sum(by_op.values())), "by_op": dict(by_op), "uncounted_nodes": unknown}


def optimized_op_types(path, threads: int = 1) -> dict:
    """Op types of the graph onnxruntime actually runs (ORT_ENABLE_ALL), and a QDQ fusion check."""
    import onnxruntime as ort

    from skulens.internal import session_options

    onnx = _onnx()
    with tempfile.TemporaryDirectory(prefix="skulens-opt-") as tmp:
        so = session_options(threads)
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        model = onnx.load(so.optimized_model_filepath, load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    source = Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
    integer = sum(v for k, v in ops.items() if k.startswith("QLinear") or "Integer" in k or k == "QGemm")
    float_mac = sum(v for k, v in ops.items() if k in _CONV_OPS | _MATMUL_OPS and not (
        k.startswith("QLinear") or "Integer" in k or k == "QGemm"))
    quantized = source.get("QuantizeLinear", 0) > 0
    made_by = {o: n.op_type for n in model.graph.node for o in n.output}
    return {"source_ops": dict(source), "optimized_ops": dict(ops),
            "output_producers": {o.name: made_by.get(o.name) for o in model.graph.output},
            "integer_mac_nodes": integer, "float_mac_nodes": float_mac,
            "remaining_quantize": ops.get("QuantizeLinear", 0), "remaining_dequantize": ops.get("DequantizeLinear", 0),
            "qdq_fully_fused": (float_mac == 0) if quantized else None}


def profile_op_times(path, x: np.ndarray, threads: int = 1, iters: int = 50) -> dict:
    """onnxruntime's profiler over ``iters`` runs: share of kernel time per op type, top nodes."""
    import onnxruntime as ort

    from skulens.internal import session_options

    with tempfile.TemporaryDirectory(prefix="skulens-prof-") as tmp:
        so = session_options(threads)
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "prof")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(3):
            sess.run(None, feed)
        for _ in range(iters):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: Counter = Counter()
    by_node: Counter = Counter()
    total_run = 0.0
    for ev in events:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            by_op[op] += ev.get("dur", 0)
            by_node[(ev["name"][: -len("_kernel_time")], op)] += ev.get("dur", 0)
        elif ev.get("cat") == "Session" and ev.get("name") == "model_run":
            total_run += ev.get("dur", 0)
    kernel = sum(by_op.values()) or 1
    n_runs = iters + 3
    return {
        "runs": n_runs,
        "model_run_us": round(total_run / n_runs, 2),
        "kernel_us": round(kernel / n_runs, 2),
        "op_share": {k: round(v / kernel, 4) for k, v in by_op.most_common()},
        "top_nodes": [{"node": n, "op": op, "us": round(v / n_runs, 2)} for (n, op), v in by_node.most_common(8)],
    }


def diagnose(path, x: np.ndarray, threads: int = 1, profile: bool = True) -> dict:
    """Everything above for one ORT model, each part skipped (with the reason) if it fails."""
    out: dict = {}
    for key, fn in (("ops", lambda: optimized_op_types(path, threads)),
                    ("profile", lambda: profile_op_times(path, x, threads) if profile else None)):
        try:
            value = fn()
        except MissingExtraError as exc:
            value = {"skipped": str(exc)}
        except Exception as exc:  # a diagnostic must never sink the benchmark
            value = {"skipped": f"{type(exc).__name__}: {str(exc)[:200]}"}
        if value is not None:
            out[key] = value
    return out


def gemm_ceiling(threads: int = 1, m: int = 256, k: int = 1024, n: int = 1024, seconds: float = 0.3) -> dict:
    """Measured MAC/s of one large fp32 MatMul and one u8 x s8 MatMulInteger in onnxruntime:
    what this CPU's kernels reach on ideal shapes, a practical ceiling for the roofline."""
    import time

    import onnxruntime as ort

    from skulens.internal import session_options

    _onnx()  # MissingExtraError without the onnx package
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    out = {"shape_mkn": [m, k, n], "threads": threads}
    for name, op, a_type, a, b in (
            ("fp32", "MatMul", TensorProto.FLOAT, rng.standard_normal((m, k)).astype(np.float32),
             rng.standard_normal((k, n)).astype(np.float32)),
            ("int8", "MatMulInteger", TensorProto.UINT8, rng.integers(0, 255, (m, k), dtype=np.uint8),
             rng.integers(-127, 127, (k, n), dtype=np.int8))):
        out_type = TensorProto.FLOAT if name == "fp32" else TensorProto.INT32
        graph = helper.make_graph(
            [helper.make_node(op, ["a", "b"], ["y"])], "ceiling",
            [helper.make_tensor_value_info("a", a_type, [m, k])],
            [helper.make_tensor_value_info("y", out_type, [m, n])],
            initializer=[numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        sess = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                    providers=["CPUExecutionProvider"])
        feed = {"a": a}
        sess.run(None, feed)
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        out[f"{name}_gmacs"] = round(m * k * n / min(times) / 1e9, 2)  # best run: a ceiling
    return out
