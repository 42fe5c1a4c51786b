"""The preprocessing contract: validation, serialisation, and training/SDK parity on real photos."""
import cv2
import numpy as np
import pytest

from sdk import ImageClassifier, ImageError, ModelError, PreprocessConfig, decode_image


def test_rejects_invalid_contracts():
    with pytest.raises(ValueError, match="color_order"):
        PreprocessConfig(color_order="RGBA")
    with pytest.raises(ValueError, match="mean/std need 1"):
        PreprocessConfig(color_order="GRAY")
    with pytest.raises(ValueError, match="crop_fraction"):
        PreprocessConfig(crop_fraction=0)


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


def test_training_and_sdk_preprocessing_are_identical(tiny_run, tiny_models, grocery_subset):
    """Parity: the tensors training evaluated on == what the SDK feeds the exported model,
    using the contract read back from the ONNX metadata, for the same real photos."""
    from sdk import load_dataset
    from training.checkpoint import load_checkpoint, preprocess_of
    from training.data import eval_tensors

    samples = load_dataset(grocery_subset).split("test")[:6]
    train_side = eval_tensors(samples, preprocess_of(load_checkpoint(tiny_run[0] / "best.pt"))).numpy()
    with ImageClassifier.from_path(tiny_models[1]) as clf:
        sdk_side = np.stack([clf.preprocess(s.path.read_bytes()) for s in samples])
    assert sdk_side.shape == train_side.shape == (6, 3, 32, 32)
    np.testing.assert_allclose(sdk_side, train_side, atol=1e-6, rtol=0)
