"""Export: one self-contained ONNX file, dynamic batch, parity, metadata that survives INT8."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import write_metadata
from export._onnx import read_metadata_props, sha256_file
from sdk import ImageClassifier, ModelError, PreprocessConfig
from sdk._metadata import ModelMetadata, decode_metadata


def test_fp32_model_is_self_contained_checked_and_batch_dynamic(tiny_models):
    fp32, _, report = tiny_models
    assert not list(fp32.parent.glob("*.data")), "weights must not go to a side file"
    model = onnx.load(str(fp32))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:]), "only the batch axis is dynamic"
    sess = ort.InferenceSession(str(fp32))
    for n in (1, 3):
        out = sess.run(None, {inp.name: np.zeros((n, 3, 32, 32), np.float32)})[0]
        assert out.shape == (n, 6)
    assert report["parity_max_abs_logit_diff"] < 1e-4
    assert report["parity_inputs"] == "real images"


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
    write_metadata(fp32, ModelMetadata(**{**meta.__dict__, "labels": meta.labels[:-1]}), out=wrong)
    with pytest.raises(ModelError, match="5 labels but the model outputs 6"):
        ImageClassifier.from_path(wrong)
