"""The embedding's colour histogram (export._colour): the same bins as OpenCV's HSV histogram on
real photos, the same answer from normalised, raw and patch-folded pixels, kept float (exact)
through INT8 quantization, and declared in the metadata."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from skulens import ImageClassifier, load_dataset
from skulens.export import ExportConfig
from skulens.export._colour import ColourHistogram

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def pixels(grocery_subset):
    """[N, 64, 64, 3] uint8 RGB crops of real photos, one per subset class."""
    ds = load_dataset(grocery_subset)
    seen, out = set(), []
    for s in ds.split("train"):
        if s.label not in seen:
            seen.add(s.label)
            img = cv2.resize(cv2.imread(str(s.path)), (64, 64), interpolation=cv2.INTER_AREA)
            out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(out)


def _normalised(rgb: np.ndarray, order="RGB") -> torch.Tensor:
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x if order == "RGB" else x.flip(1)


def _opencv_hist(rgb: np.ndarray) -> np.ndarray:
    out = []
    for im in rgb:
        hsv = cv2.cvtColor(im, cv2.COLOR_RGB2HSV)  # 8-bit: H in 0..179, S in 0..255
        h = cv2.calcHist([hsv], [0, 1], None, [12, 4], [0, 180, 0, 256]).ravel()
        h = np.sqrt(h / h.sum())
        out.append(h / np.linalg.norm(h))
    return np.stack(out)


def test_bins_match_opencv_hsv_histogram(pixels):
    with torch.no_grad():
        ours = ColourHistogram(MEAN, STD, "RGB", pool=1)(_normalised(pixels)).numpy()
    ref = _opencv_hist(pixels)
    assert ours.shape == (len(pixels), 48) and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    cos = (ours * ref).sum(1)  # OpenCV rounds H and S to integers: a few pixels change bin
    assert cos.min() > 0.97, cos
    # a colour that is wrong (channels swapped) does not pass for the right one
    with torch.no_grad():
        swapped = ColourHistogram(MEAN, STD, "BGR", pool=1)(_normalised(pixels)).numpy()
    assert (swapped * ref).sum(1).mean() < 0.9


def test_same_histogram_from_bgr_raw_and_patch_folded_pixels(pixels):
    with torch.no_grad():
        ref = ColourHistogram(MEAN, STD, "RGB")(_normalised(pixels))
        bgr = ColourHistogram(MEAN[::-1], STD[::-1], "BGR")(_normalised(pixels, "BGR"))  # mean/std in BGR order
        raw_rgb = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
        raw = ColourHistogram(MEAN, STD, "RGB")
        raw.read_raw_pixels()
        got_raw = raw(raw_rgb)
        for k in (4, 3):  # 8 % 4 == 0: pooled in the folded layout; 3: unfolded first
            n, h, w, c = pixels.shape
            folded = torch.from_numpy(pixels[:, :, :w // k * k]).float().reshape(n, h, w // k, k * c).permute(0, 3, 1, 2)
            m = ColourHistogram(MEAN, STD, "RGB")
            m.read_raw_pixels(width_fold=k)
            unfolded_ref = raw(raw_rgb[:, :, :, :w // k * k])
            torch.testing.assert_close(m(folded), unfolded_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(bgr, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_raw, ref, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def colour_models(tiny_run, grocery_subset, tmp_path_factory):
    """The tiny patch-stem model (uint8 input, width fold) exported with the colour histogram, + INT8."""
    from skulens.export import export_classifier

    out = tmp_path_factory.mktemp("colour") / "tiny.onnx"
    report = export_classifier(ExportConfig(checkpoint=str(tiny_run[0] / "best.pt"), out=str(out), int8=True,
                                            data=str(grocery_subset), calibration_size=32, activation_type="u8",
                                            embedding_colour=1.0, eval_limit=16))
    return report["fp32"]["path"], report["int8"]["path"], report


def test_export_appends_a_float_colour_histogram(colour_models, grocery_image):
    fp32, int8, report = colour_models
    spec = report["embedding"]
    assert spec["colour"] == {"hue_bins": 12, "sat_bins": 4, "pool": 8, "weight": 1.0}
    assert spec["dim"] == spec["features"] + 48 and report["parity_max_abs_embedding_diff"] < 1e-3
    with ImageClassifier.from_path(fp32) as a, ImageClassifier.from_path(int8) as b:
        assert a.embedding_spec == b.embedding_spec == spec and a.preprocess_config.dtype == "uint8"
        ea, eb = a.embed(grocery_image), b.embed(grocery_image)
    # the CNN part and the colour part each hold half of the unit vector's energy (weight 1)
    assert np.linalg.norm(ea[-48:]) == pytest.approx(np.sqrt(0.5), abs=1e-4)
    # INT8 quantizes the network; the colour arithmetic stays float, so its part is exact
    ca, cb = ea[-48:] / np.linalg.norm(ea[-48:]), eb[-48:] / np.linalg.norm(eb[-48:])
    np.testing.assert_allclose(ca, cb, atol=1e-5)
    assert ca.max() > 0  # a real photo's histogram, not zeros


def test_off_by_default_and_bad_weight_refused(tiny_models):
    spec = tiny_models[2]["embedding"]
    assert "colour" not in spec and spec["dim"] == spec["features"]
    with pytest.raises(ValueError, match="embedding_colour"):
        ExportConfig(checkpoint="x.pt", out="y.onnx", embedding_colour=-1)
