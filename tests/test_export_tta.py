"""Export at another input size than trained, and flip test-time augmentation inside the graph."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from skulens import ImageClassifier, ModelError, PreprocessConfig, decode_image


@pytest.fixture(scope="module")
def resized(tiny_run, grocery_subset, tmp_path_factory):
    """The tiny model (trained at 32 px) exported at 40 px: plain, and with the flip."""
    from conftest import _export_tiny

    plain = _export_tiny(tiny_run, grocery_subset, tmp_path_factory.mktemp("at40"), input_size=40)
    flip = _export_tiny(tiny_run, grocery_subset, tmp_path_factory.mktemp("at40flip"), input_size=40, tta="flip")
    return plain, flip


def _pixels(grocery_subset, n=6):
    pre = PreprocessConfig(input_size=(40, 40), dtype="uint8", layout="NHWC")
    paths = [line.split(", ")[0] for line in (grocery_subset / "test.txt").read_text().splitlines()[:n]]
    return np.stack([pre.apply(decode_image(p, preprocess=pre)) for p in paths])


def test_the_contract_and_provenance_name_the_new_size_and_the_flip(resized):
    (fp32, _, report), (tfp32, tint8, treport) = resized
    for path in (fp32, tfp32, tint8):
        with ImageClassifier.from_path(path) as clf:
            assert clf.metadata.preprocess.input_size == (40, 40)
            assert clf.metadata.provenance["trained_input_size"] == [32, 32]
    with ImageClassifier.from_path(tfp32) as clf:
        assert clf.metadata.provenance["tta"] == "flip"
    with ImageClassifier.from_path(fp32) as clf:
        assert "tta" not in clf.metadata.provenance
    # parity: the torch model (itself averaging the two views) vs the ONNX graph, same photos
    assert report["parity_max_abs_logit_diff"] < 1e-4
    assert treport["parity_max_abs_logit_diff"] < 1e-4 and treport["parity_max_abs_embedding_diff"] < 1e-4


def test_flip_logits_are_the_mean_of_the_image_and_its_mirror(resized, grocery_subset):
    """The patchify stem's width fold regroups pixels by patch; with the flip it must be off,
    or the "mirror" would flip the order of patches only (this test would fail)."""
    (fp32, _, _), (tfp32, _, _) = resized
    x = _pixels(grocery_subset)
    plain = ort.InferenceSession(str(fp32))
    flip = ort.InferenceSession(str(tfp32))
    a = plain.run(["logits"], {"input": x})[0]
    b = plain.run(["logits"], {"input": np.ascontiguousarray(x[:, :, ::-1])})[0]
    got = flip.run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(got, (a + b) / 2, atol=1e-4)
    assert np.abs(a - b).max() > 1e-2, "the mirror image must change the tiny model's logits"
    # and the mirror image of the input gives the same answer (up to float rounding)
    np.testing.assert_allclose(flip.run(["logits"], {"input": np.ascontiguousarray(x[:, :, ::-1])})[0], got, atol=1e-4)
    emb = flip.run(["embedding"], {"input": x})[0]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_int8_flip_model_reads_the_pixels_without_quantizing_them(resized):
    """The flip and the concatenation of the pixels stay exact uint8 copies: no Cast or
    QuantizeLinear at the input, everything fused, logits still float from the head's Gemm."""
    from skulens.bench._graph import optimized_op_types

    _, (_, tint8, treport) = resized
    graph = onnx.load(str(tint8)).graph
    assert not [n for n in graph.node if n.op_type in ("Cast", "QuantizeLinear") and graph.input[0].name in n.input]
    ops = optimized_op_types(tint8)
    assert ops["remaining_quantize"] == 0 and ops["output_producers"]["logits"] == "QGemm"
    assert treport["int8"]["top1_agreement_with_fp32"] >= 0.8


def test_a_model_that_reads_a_fixed_size_is_refused_at_another_size():
    from skulens.export._pipeline import _resized_input
    from skulens.training.models import create_model

    pre = PreprocessConfig(input_size=(64, 64))
    model = create_model("seed_cnn", num_classes=3, input_size=64).eval()
    with pytest.raises(ModelError, match="takes only its trained input size 64x64, not 80x80"):
        _resized_input(model, pre, 80, "ck.pt")
    assert _resized_input(create_model("efficientnet_lite0", num_classes=3).eval(), pre, 80, "ck.pt").input_size == (80, 80)
    with torch.no_grad():  # unchanged model at its own size
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_bad_export_settings_are_refused_before_the_checkpoint_is_read():
    from skulens.export import ExportConfig

    with pytest.raises(ValueError, match="tta must be"):
        ExportConfig(checkpoint="missing.pt", tta="rotate")
    with pytest.raises(ValueError, match="input_size must be"):
        ExportConfig(checkpoint="missing.pt", input_size=-3)
