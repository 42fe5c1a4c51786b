"""Export: one self-contained ONNX file, dynamic batch, parity, metadata that survives INT8."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from skulens.export import write_metadata
from skulens.export._onnx import read_metadata_props, sha256_file
from skulens import ImageClassifier, ModelError, PreprocessConfig
from skulens._metadata import ModelMetadata, decode_metadata


@pytest.mark.parametrize("which, dtype, shape", [("tiny_models", np.uint8, (32, 32, 3)),
                                                  ("tiny_float_models", np.float32, (3, 32, 32))])
def test_fp32_model_is_self_contained_checked_and_batch_dynamic(which, dtype, shape, request):
    fp32, _, report = request.getfixturevalue(which)
    assert not list(fp32.parent.glob("*.data")), "weights must not go to a side file"
    model = onnx.load(str(fp32))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:]), "only the batch axis is dynamic"
    assert tuple(d.dim_value for d in dims[1:]) == shape
    assert onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type) == dtype
    sess = ort.InferenceSession(str(fp32))
    for n in (1, 3):
        out = sess.run(None, {inp.name: np.zeros((n, *shape), dtype)})[0]
        assert out.shape == (n, 6)
    # parity: PyTorch on its training tensors vs this model on the SDK's tensors, same photos
    assert report["parity_max_abs_logit_diff"] < 1e-4
    assert report["parity_inputs"] == "real images"
    assert report["input"] == {"dtype": np.dtype(dtype).name, "layout": "NHWC" if dtype == np.uint8 else "NCHW"}
    ops = [n.op_type for n in model.graph.node]
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops


def test_uint8_int8_model_reads_the_pixels_without_quantizing_them(tiny_models, tiny_float_models):
    """With uint8 input the INT8 model has no Cast and no QuantizeLinear at its input, before and
    after onnxruntime's optimisation; the float32-input one quantizes its input (one Q left)."""
    from skulens.bench._graph import optimized_op_types

    _, int8, report = tiny_models
    graph = onnx.load(str(int8)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert not [n for n in graph.node if n.op_type in ("Cast", "QuantizeLinear") and graph.input[0].name in n.input]
    ops = optimized_op_types(int8)
    assert ops["qdq_fully_fused"] and ops["remaining_quantize"] == 0
    assert "QLinearGlobalAveragePool" in ops["optimized_ops"]
    assert optimized_op_types(tiny_float_models[1])["remaining_quantize"] == 1
    # the same checkpoint, quantized either way, answers alike (24 test photos: one is 4 pp)
    assert report["int8"]["top1_agreement_with_fp32"] >= 0.8
    assert tiny_float_models[2]["int8"]["top1_agreement_with_fp32"] >= 0.8


def test_contract_dtype_must_match_the_model_input(tiny_models, tiny_float_models, tmp_path):
    fp32, _, _ = tiny_models
    float_meta = decode_metadata(read_metadata_props(tiny_float_models[0]))
    wrong = tmp_path / "wrong_dtype.onnx"
    write_metadata(fp32, float_meta, out=wrong)
    with pytest.raises(ModelError, match="input type tensor\\(uint8\\) does not match .* dtype 'float32'"):
        ImageClassifier.from_path(wrong)


def test_metadata_survives_quantization_and_names_its_parent(tiny_models):
    fp32, int8, report = tiny_models
    m32 = decode_metadata(read_metadata_props(fp32))
    m8 = decode_metadata(read_metadata_props(int8))
    assert m32.labels == m8.labels and len(m32.labels) == 6
    assert m32.preprocess == m8.preprocess == PreprocessConfig.from_dict(m32.preprocess.to_dict())
    assert m32.quantization is None
    assert m8.quantization["format"] == "QDQ" and m8.quantization["activations"] in ("u8", "s8")
    assert m8.parent_sha256 == sha256_file(fp32)
    assert m32.coarse_labels and len(m32.coarse_labels) == 6
    assert "training" in m32.metrics and "eval" in m32.metrics
    assert m32.io["inputs"][0]["name"] == "input" and m32.provenance["skulens_version"]
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_export_report_compares_fp32_and_int8(tiny_models):
    fp32, int8, report = tiny_models
    saved = json.loads((fp32.parent / "tiny.report.json").read_text())
    assert saved["int8"]["size_bytes"] < saved["fp32"]["size_bytes"]
    for key in ("top1", "top5", "n", "coarse_top1"):
        assert key in saved["fp32"]["eval"] and key in saved["int8"]["eval"]
    assert 0.0 <= saved["int8"]["top1_agreement_with_fp32"] <= 1.0
    assert saved["int8"]["top1_drop_pp"] == pytest.approx(
        100 * (saved["fp32"]["eval"]["top1"] - saved["int8"]["eval"]["top1"]), abs=1e-2)


def test_model_without_skulens_metadata_is_refused(tiny_models, tmp_path):
    fp32, _, _ = tiny_models
    model = onnx.load(str(fp32))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ModelError, match="no skulens metadata"):
        ImageClassifier.from_path(bare)


def test_label_count_must_match_model_output(tiny_models, tmp_path):
    fp32, _, _ = tiny_models
    meta = decode_metadata(read_metadata_props(fp32))
    wrong = tmp_path / "wrong.onnx"
    coarse = meta.coarse_labels[:-1] if meta.coarse_labels else None
    write_metadata(fp32, ModelMetadata(**{**meta.__dict__, "labels": meta.labels[:-1], "coarse_labels": coarse}), out=wrong)
    with pytest.raises(ModelError, match="5 labels but the model outputs 6"):
        ImageClassifier.from_path(wrong)


def test_int8_logits_come_float_from_the_final_gemm(tiny_models):
    """No QuantizeLinear/DequantizeLinear between the head's Gemm and the logits output, so
    onnxruntime runs a float-output QGemm and scores keep full precision (the embedding output
    dequantizes the pooled features it normalises: its only DequantizeLinear nodes)."""
    from skulens.bench._graph import optimized_op_types

    _, int8, _ = tiny_models
    graph = onnx.load(str(int8)).graph
    (producer,) = [n for n in graph.node if graph.output[0].name in n.output]
    assert producer.op_type == "Gemm"
    opt = optimized_op_types(int8)
    assert opt["optimized_ops"].get("QGemm") == 1 and opt["output_producers"]["logits"] == "QGemm"
    assert opt["output_producers"]["embedding"] == "Div" and opt["remaining_quantize"] == 0


def test_histogram_calibration_works_and_is_refused_up_front_when_it_cannot_fit(tiny_run, grocery_subset, tmp_path,
                                                                               monkeypatch):
    """entropy/percentile keep every calibration image's activations in memory (onnxruntime):
    a set that cannot fit is refused with the fix before any quantization, not killed by the OOM killer."""
    from conftest import _export_tiny
    from skulens.export import _quantize

    from skulens.export import ExportConfig, export_classifier

    # 20 images: not a multiple of the calibration batch (a shorter last batch once broke onnxruntime's histograms)
    report = export_classifier(ExportConfig(checkpoint=str(tiny_run[0] / "best.pt"), out=str(tmp_path / "pct.onnx"),
                                            int8=True, data=str(grocery_subset), calibration_size=20,
                                            activation_type="u8", calibrate_method="percentile"))
    assert report["int8"]["quantization"]["calibrate_method"] == "percentile" and report["int8"]["shipped"]
    assert report["int8"]["top1_agreement_with_fp32"] > 0.5
    calls = []
    monkeypatch.setattr(_quantize, "_available_memory", lambda: 2 ** 20)  # 1 MB free
    monkeypatch.setattr(_quantize, "quantize_static", lambda *a, **k: calls.append(1))
    with pytest.raises(ModelError, match=r"entropy keeps every activation.*--calibration-size \d+"):
        _export_tiny(tiny_run, grocery_subset, tmp_path / "ent", calibrate_method="entropy")
    assert not calls and not list((tmp_path / "ent").glob("*.onnx"))
