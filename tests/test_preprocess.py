"""The preprocessing contract: validation, serialisation, and training/SDK parity on real photos."""
import json

import cv2
import numpy as np
import pytest

from skulens import ImageClassifier, ImageError, ModelError, PreprocessConfig, decode_image


def test_rejects_invalid_contracts():
    with pytest.raises(ValueError, match="color_order"):
        PreprocessConfig(color_order="RGBA")
    with pytest.raises(ValueError, match="mean/std need 1"):
        PreprocessConfig(color_order="GRAY")
    with pytest.raises(ValueError, match="crop_fraction"):
        PreprocessConfig(crop_fraction=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        PreprocessConfig(dtype="float16")


def test_uint8_contract_gives_the_resized_pixels(grocery_image):
    """dtype uint8: the same geometry and colour order, no normalisation (the model does it)."""
    bgr = decode_image(grocery_image)
    u8 = PreprocessConfig(input_size=(40, 56), dtype="uint8", layout="NHWC")
    f32 = PreprocessConfig(input_size=(40, 56), mean=(0, 0, 0), std=(1, 1, 1))
    x = u8.apply(bgr)
    assert x.shape == (40, 56, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
    np.testing.assert_allclose(x.transpose(2, 0, 1) / np.float32(255), f32.apply(bgr), atol=1e-6)
    nchw = PreprocessConfig(input_size=(40, 56), dtype="uint8").apply(bgr)
    np.testing.assert_array_equal(nchw, x.transpose(2, 0, 1))


def test_json_round_trip_and_unknown_fields():
    cfg = PreprocessConfig(input_size=(48, 40), color_order="BGR", resize="direct", interpolation="linear",
                           mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), layout="NHWC", crop_fraction=0.875)
    assert PreprocessConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ModelError, match="unknown fields"):
        PreprocessConfig.from_dict({**cfg.to_dict(), "gamma": 2.2})
    with pytest.raises(ModelError, match="not valid JSON"):
        PreprocessConfig.from_json("{nope")


def test_shapes_colour_orders_and_layouts(grocery_image):
    bgr = decode_image(grocery_image)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    rgb = PreprocessConfig(input_size=(40, 56))
    assert rgb.apply(bgr).shape == (3, 40, 56) and rgb.apply(bgr).dtype == np.float32
    np.testing.assert_array_equal(rgb.apply(bgra), rgb.apply(bgr))  # alpha dropped
    g = rgb.apply(gray)
    np.testing.assert_array_equal(g[0], g[1])  # gray input -> R = G = B (default mean/std are equal)
    np.testing.assert_array_equal(g[1], g[2])
    nhwc = PreprocessConfig(layout="NHWC", color_order="GRAY", mean=(0.5,), std=(0.25,))
    assert nhwc.apply(bgr).shape == (64, 64, 1)
    # colour order really swaps channels: RGB channel 0 is BGR channel 2
    raw = PreprocessConfig(mean=(0, 0, 0), std=(1, 1, 1))
    raw_bgr = PreprocessConfig(color_order="BGR", mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_array_equal(raw.apply(bgr)[0], raw_bgr.apply(bgr)[2])


def test_shorter_side_resize_then_centre_crop():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # a white centre square flanked by black
    cfg = PreprocessConfig(input_size=(10, 10), mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest")
    out = cfg.apply(img)
    assert out.min() == 1.0, "the centre crop keeps only the white middle"
    direct = PreprocessConfig(input_size=(10, 10), resize="direct", mean=(0, 0, 0), std=(1, 1, 1),
                              interpolation="nearest").apply(img)
    assert direct.min() == 0.0, "direct resize squeezes the black sides in"


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint16), np.zeros((8, 8, 2), np.uint8),
                                 np.zeros((0, 8, 3), np.uint8), "not an array"])
def test_bad_arrays_are_refused(bad):
    with pytest.raises(ImageError):
        PreprocessConfig().apply(bad)


def test_float_export_preprocessing_is_identical_to_training(tiny_run, tiny_float_models, grocery_subset):
    from skulens import load_dataset
    from skulens.training.checkpoint import load_checkpoint, preprocess_of
    from skulens.training.data import eval_tensors

    samples = load_dataset(grocery_subset).split("test")[:6]
    train_side = eval_tensors(samples, preprocess_of(load_checkpoint(tiny_run[0] / "best.pt"))).numpy()
    with ImageClassifier.from_path(tiny_float_models[1]) as clf:
        sdk_side = np.stack([clf.preprocess(s.path.read_bytes()) for s in samples])
    assert sdk_side.shape == train_side.shape == (6, 3, 32, 32)
    np.testing.assert_allclose(sdk_side, train_side, atol=1e-6, rtol=0)


def test_training_and_sdk_preprocessing_are_identical(tiny_run, tiny_models, grocery_subset):
    """Parity: the tensors training evaluated on == what the SDK feeds the exported model,
    using the contract read back from the ONNX metadata, for the same real photos."""
    from skulens import load_dataset
    from skulens.training.checkpoint import load_checkpoint, preprocess_of
    from skulens.training.data import eval_tensors

    samples = load_dataset(grocery_subset).split("test")[:6]
    train_pre = preprocess_of(load_checkpoint(tiny_run[0] / "best.pt"))
    train_side = eval_tensors(samples, train_pre).numpy()
    with ImageClassifier.from_path(tiny_models[1]) as clf:
        sdk_side = np.stack([clf.preprocess(s.path.read_bytes()) for s in samples])
    assert train_side.shape == (6, 3, 32, 32) and train_side.dtype == np.float32
    # the exported model takes the pixels and normalises inside: the same tensor once normalised
    assert sdk_side.shape == (6, 32, 32, 3) and sdk_side.dtype == np.uint8
    mean, std = (np.array(v, np.float32)[:, None, None] for v in (train_pre.mean, train_pre.std))
    normalised = (sdk_side.transpose(0, 3, 1, 2) / np.float32(255) - mean) / std
    np.testing.assert_allclose(normalised, train_side, atol=1e-5, rtol=0)


def test_reduced_decode_field_keeps_old_contracts_meaning():
    """Contracts written before ``reduced_decode`` existed mean a full decode; a contract with it
    off is written exactly as before (older skulens reads it), one with it on carries it."""
    from skulens.internal import decode_metadata

    old = {"input_size": [224, 224], "color_order": "RGB", "resize": "shorter_side_crop", "crop_fraction": 1.0,
           "interpolation": "area", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
           "layout": "NHWC", "dtype": "uint8"}
    cfg = PreprocessConfig.from_dict(old)
    assert cfg.reduced_decode == 0 and cfg.decode_scale(4032, 3024) == 1
    assert cfg.to_dict() == old
    meta = decode_metadata({"skulens.schema_version": "1", "skulens.kind": "classifier", "skulens.labels": '["a"]',
                            "skulens.io": "{}", "skulens.preprocess": json.dumps(old)})
    assert meta.preprocess == cfg
    on = PreprocessConfig.from_dict({**old, "reduced_decode": 2})
    assert on.to_dict()["reduced_decode"] == 2.0 and PreprocessConfig.from_json(on.to_json()) == on
    assert on.decode_scale(4032, 3024) == 4
    for bad in (0.5, -1):
        with pytest.raises(ValueError, match="reduced_decode"):
            PreprocessConfig(reduced_decode=bad)
        with pytest.raises(ModelError, match="reduced_decode"):
            PreprocessConfig.from_dict({**old, "reduced_decode": bad})
