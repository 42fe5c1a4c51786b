"""The optional OpenVINO backend (``ClassifierOptions(backend="openvino")``): the same results as
onnxruntime on real photos with the tiny fp32 and INT8 models, every results API, threads and
batch sizes, and clear errors (missing extra, bad backend name, wrong input)."""
from __future__ import annotations

import argparse
import importlib.util
import sys

import numpy as np
import pytest

from skulens import ClassifierOptions, ImageClassifier, MissingExtraError, ModelError
from skulens.internal import add_dataclass_flags, softmax

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed: pip install 'skulens[openvino]'")
# logits (and so softmax scores) of the two backends on the same model: fp32 to float rounding;
# INT8 to the rounding of two integer-kernel implementations (5e-3 measured on the tiny model)
ATOL = {"fp32": 1e-4, "int8": 2e-2}


def _photos(grocery_subset) -> list[str]:
    return [line.split(",")[0] for line in (grocery_subset / "test.txt").read_text().splitlines() if line]


def _pair(path, **kw):
    return (ImageClassifier.from_path(path, ClassifierOptions(num_threads=1, **kw)),
            ImageClassifier.from_path(path, ClassifierOptions(num_threads=1, backend="openvino", **kw)))


@needs_openvino
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_same_results_as_onnxruntime_on_real_photos(tiny_models, grocery_subset, precision):
    path = tiny_models[0] if precision == "fp32" else tiny_models[1]
    photos = _photos(grocery_subset)
    ort_clf, ov_clf = _pair(path, max_batch=5)  # 24 photos: batches of 5, 5, 5, 5 and 4
    a, b = ort_clf.logits_batch(photos), ov_clf.logits_batch(photos)
    assert a.shape == b.shape == (len(photos), len(ort_clf.labels)) and b.dtype == np.float32
    atol = ATOL[precision]
    np.testing.assert_allclose(b, a, atol=atol)
    np.testing.assert_allclose(softmax(b), softmax(a), atol=atol)
    top2 = np.sort(a, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * atol  # a near-tie may flip within the tolerance
    assert clear.sum() >= 4
    assert (a.argmax(1) == b.argmax(1))[clear].all()

    for x, y in zip(ort_clf.classify_batch(photos), ov_clf.classify_batch(photos)):
        assert x.source == y.source and len(x.categories) == len(y.categories) and x.unknown == y.unknown
        assert [c.score for c in y.categories] == pytest.approx([c.score for c in x.categories], abs=atol)
    one_a, one_b = ort_clf.classify(photos[0]), ov_clf.classify(photos[0])
    assert one_b.top.score == pytest.approx(one_a.top.score, abs=atol)
    ea, eb = ort_clf.embed_batch(photos[:7]), ov_clf.embed_batch(photos[:7])
    assert eb.shape == ea.shape and ov_clf.embed(photos[0]).shape == (ea.shape[1],)
    np.testing.assert_allclose(eb, ea, atol=1e-4 if precision == "fp32" else 5e-2)


@needs_openvino
def test_uint8_nhwc_input_threads_and_batch_sizes(tiny_models, grocery_image):
    _, int8, _ = tiny_models
    clf = ImageClassifier.from_path(int8, ClassifierOptions(num_threads=2, backend="openvino"))
    session = clf._session
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape == [None, *clf.preprocess_config.tensor_shape]
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding"]
    assert session.num_threads == 2
    # f32 like onnxruntime (not the bf16 default of CPUs with AVX512-BF16/AMX), no thread pinning
    assert session.settings() == {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                  "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
    assert ImageClassifier.from_path(int8, ClassifierOptions(num_threads=1, backend="openvino"))._session.num_threads == 1
    x = clf.preprocess(grocery_image)
    assert x.dtype == np.uint8
    for n in (1, 3, 8):
        out = clf.run(np.stack([x] * n))
        assert out.shape == (n, len(clf.labels))
        np.testing.assert_allclose(out, out[:1].repeat(n, 0), atol=1e-5)  # the batch does not change a row
    with pytest.raises(ModelError, match="takes tensor\\(uint8\\)"):
        clf.run(np.stack([x]).astype(np.float32))  # OpenVINO would convert silently; onnxruntime refuses
    h, w, c = x.shape
    with pytest.raises(ModelError, match="got uint8"):
        clf.run(np.zeros((1, h - 1, w, c), np.uint8))
    clf.close()
    with pytest.raises(RuntimeError, match="closed"):
        clf.run(np.stack([x]))


def test_bad_backend_name_is_a_clear_error(tiny_models):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt': choose one of onnxruntime, openvino"):
        ClassifierOptions(backend="tensorrt")
    with pytest.raises(ValueError, match="providers are onnxruntime's"):
        ClassifierOptions(backend="openvino", providers=("CUDAExecutionProvider",))
    # the CLI flag comes from the field, with its choices and help
    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, ClassifierOptions, skip=("providers",))
    assert parser.parse_args(["--backend", "openvino"]).backend == "openvino"
    assert parser.parse_args([]).backend == "onnxruntime"
    assert "OpenVINO" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--backend", "tensorrt"])


def test_missing_extra_names_it(tiny_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'skulens\[openvino\]'"):
        ImageClassifier.from_path(tiny_models[1], ClassifierOptions(backend="openvino"))


@needs_openvino
def test_bad_model_files_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        ImageClassifier.from_path(tmp_path / "missing.onnx", ClassifierOptions(backend="openvino"))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match="OpenVINO cannot read this model"):
        ImageClassifier.from_path(junk, ClassifierOptions(backend="openvino"))
