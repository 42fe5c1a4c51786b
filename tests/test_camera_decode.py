"""Camera-sized JPEGs: reduced-scale decoding by the contract, EXIF orientation, training/SDK parity."""
import dataclasses
import struct

import cv2
import numpy as np
import pytest

from skulens import ClassifierOptions, ImageClassifier, ImageError, PreprocessConfig, decode_image

EXIF_ORIENTATION = 0x0112


def with_exif(jpeg: bytes, orientation: int, big_endian: bool = False, thumbnail: bytes = b"") -> bytes:
    """``jpeg`` with an APP1 EXIF segment right after SOI: a TIFF header, one IFD holding the
    orientation tag (SHORT), then ``thumbnail`` bytes as a camera stores its preview JPEG."""
    e = ">" if big_endian else "<"
    tiff = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(e + "I", 8)
    ifd = struct.pack(e + "H", 1) + struct.pack(e + "HHIHH", EXIF_ORIENTATION, 3, 1, orientation, 0)
    payload = b"Exif\x00\x00" + tiff + ifd + struct.pack(e + "I", 0) + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def frame_1080p(image: np.ndarray) -> np.ndarray:
    """A Grocery photo as a 1920x1080 camera frame (what the camera benchmark feeds)."""
    from skulens.bench.camera import camera_frame

    return camera_frame(image, (1920, 1080))


@pytest.fixture(scope="module")
def photo(grocery_image) -> np.ndarray:
    """A real photo, cropped to 348x300 so that every orientation gives a different array."""
    return np.ascontiguousarray(decode_image(grocery_image)[:300])


# -- EXIF orientation ----------------------------------------------------------------------------
@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_imread_for_full_and_reduced_decode(photo, tmp_path, orientation, big_endian):
    data = with_exif(jpeg_bytes(photo), orientation, big_endian)
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(data)
    upright = cv2.imread(str(path), cv2.IMREAD_COLOR)  # OpenCV's reading honours the tag
    np.testing.assert_array_equal(decode_image(path), upright)
    np.testing.assert_array_equal(decode_image(data), upright)
    # reduced: a contract that allows 1/4 for this photo; OpenCV's reduced read, also upright
    contract = PreprocessConfig(input_size=(32, 32), reduced_decode=2)
    assert contract.decode_scale(*upright.shape[1::-1]) == 4
    reduced = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_4)
    np.testing.assert_array_equal(decode_image(path, preprocess=contract), reduced)
    np.testing.assert_array_equal(decode_image(data, preprocess=contract), reduced)


def test_a_sideways_phone_photo_is_classified_upright(photo, tiny_models):
    """Orientation 6 (camera turned 90 degrees): the pixels are stored sideways; the SDK must
    see what the photo shows, the same as the upright JPEG."""
    sideways = jpeg_bytes(cv2.rotate(photo, cv2.ROTATE_90_COUNTERCLOCKWISE), quality=100)
    upright = cv2.rotate(decode_image(sideways), cv2.ROTATE_90_CLOCKWISE)
    tagged = with_exif(sideways, 6)
    np.testing.assert_array_equal(decode_image(tagged), upright)
    with ImageClassifier.from_path(tiny_models[1], ClassifierOptions(reduced_decode=0)) as clf:
        np.testing.assert_array_equal(clf.preprocess(tagged), clf.preprocess(upright))


def test_a_truncated_jpeg_with_a_complete_exif_thumbnail_is_refused(photo):
    thumbnail = jpeg_bytes(cv2.resize(photo, (40, 34)))  # holds its own SOS ... EOI markers
    data = with_exif(jpeg_bytes(photo), 1, thumbnail=thumbnail)
    assert decode_image(data).shape == photo.shape
    with pytest.raises(ImageError, match="truncated JPEG"):
        decode_image(data[:len(data) * 2 // 3])


# -- the decode scale rule -----------------------------------------------------------------------
def test_decode_scale_keeps_ratio_times_the_resized_pixels():
    lite0 = PreprocessConfig(input_size=(224, 224), reduced_decode=2)
    fast = dataclasses.replace(lite0, input_size=(128, 128))
    assert [lite0.decode_scale(*s) for s in ((1920, 1080), (4032, 3024), (348, 464))] == [2, 4, 1]
    assert [fast.decode_scale(*s) for s in ((1920, 1080), (4032, 3024), (348, 464))] == [4, 8, 1]
    assert dataclasses.replace(lite0, reduced_decode=0).decode_scale(4032, 3024) == 1
    # a crop margin needs more pixels; "direct" needs them per side
    assert dataclasses.replace(lite0, crop_fraction=0.5).decode_scale(4032, 3024) == 2
    direct = PreprocessConfig(input_size=(100, 400), resize="direct", reduced_decode=2)
    assert direct.decode_scale(1600, 1600) == 2 and direct.decode_scale(3200, 300) == 1
    # a non-square input: which side is the photo's height matters (why EXIF comes first)
    wide = PreprocessConfig(input_size=(100, 300), reduced_decode=1)
    assert wide.decode_scale(2400, 800) == 8 and wide.decode_scale(800, 2400) == 2
    rng = np.random.default_rng(0)
    for _ in range(300):
        w, h = (int(v) for v in rng.integers(8, 5000, size=2))
        cfg = PreprocessConfig(input_size=tuple(int(v) for v in rng.integers(8, 300, size=2)),
                               reduced_decode=float(rng.choice([1, 1.5, 2, 3])),
                               crop_fraction=float(rng.choice([1, 0.875])))
        rh, rw = cfg.resized_size(h, w)
        scale = cfg.decode_scale(w, h)
        fits = lambda s: -(-h // s) >= cfg.reduced_decode * rh and -(-w // s) >= cfg.reduced_decode * rw  # noqa: E731
        assert scale == 1 or fits(scale)
        assert scale == 8 or not any(fits(s) for s in (8, 4, 2) if s > scale)


def test_libjpeg_rounds_reduced_sizes_up(photo):
    """decode_scale assumes libjpeg's ceil(side / scale); an odd-sized photo checks it."""
    data = jpeg_bytes(cv2.resize(photo, (333, 1001)))
    for scale, size in ((2, (167, 501)), (4, (84, 251)), (8, (42, 126))):
        cfg = PreprocessConfig(input_size=size[::-1], resize="direct", reduced_decode=1)
        assert cfg.decode_scale(333, 1001) == scale
        assert decode_image(data, preprocess=cfg).shape[:2] == size[::-1]


def test_only_jpegs_are_decoded_reduced(photo):
    contract = PreprocessConfig(input_size=(16, 16), reduced_decode=1)
    for ext in (".png", ".webp", ".bmp"):
        ok, buf = cv2.imencode(ext, photo)
        full = decode_image(buf.tobytes())
        np.testing.assert_array_equal(decode_image(buf.tobytes(), preprocess=contract), full)
    assert decode_image(photo, preprocess=contract) is photo
    gray = jpeg_bytes(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    assert decode_image(gray).shape == (300, 348)
    assert decode_image(gray, preprocess=contract).shape == (38, 44)  # still one channel, at 1/8


def test_pixel_limit_is_the_full_photo_even_when_decoding_reduced(photo):
    data = jpeg_bytes(photo)
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(data, max_pixels=50_000, preprocess=PreprocessConfig(input_size=(16, 16), reduced_decode=1))


# -- the classifier ------------------------------------------------------------------------------
def test_classifier_option_overrides_the_contract(tiny_models, grocery_image):
    frame = jpeg_bytes(frame_1080p(decode_image(grocery_image)))
    with ImageClassifier.from_path(tiny_models[1]) as clf:
        assert clf.decode_contract is clf.preprocess_config
        contract_x = clf.preprocess(frame)
    off = ImageClassifier.from_path(tiny_models[1], ClassifierOptions(reduced_decode=0))
    on = ImageClassifier.from_path(tiny_models[1], ClassifierOptions(reduced_decode=2))
    with off, on:
        assert off.decode_contract.reduced_decode == 0 and on.decode_contract.reduced_decode == 2
        assert on.decode_contract.decode_scale(1920, 1080) == 8  # 32 px input: 1080 / 8 >= 2 x 32
        reduced, full = on.preprocess(frame), off.preprocess(frame)
        full_again = clf.preprocess_config.apply(decode_image(frame))
    np.testing.assert_array_equal(full, full_again)
    np.testing.assert_array_equal(contract_x, full if not clf.preprocess_config.reduced_decode else reduced)
    assert not np.array_equal(reduced, full)  # the reduced path really was taken ...
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 3  # ... and sees the same photo
    with pytest.raises(ValueError, match="reduced_decode"):
        ClassifierOptions(reduced_decode=0.5)


def test_training_and_sdk_decode_a_camera_frame_identically(tiny_run, tiny_models, grocery_subset, tmp_path):
    """Parity on real photos as 1080p camera JPEGs: training's tensors (eval_tensors, and the
    training image cache) == the SDK's, both decoding at the reduced scale of the contract."""
    from skulens import load_dataset
    from skulens.internal import Sample
    from skulens.training.checkpoint import load_checkpoint, preprocess_of
    from skulens.training.data import eval_tensors, load_images

    samples = []
    for i, s in enumerate(load_dataset(grocery_subset).split("test")[:4]):
        path = tmp_path / f"frame{i}.jpg"
        path.write_bytes(jpeg_bytes(frame_1080p(decode_image(s.path))))
        samples.append(Sample(path, s.label))
    train_pre = dataclasses.replace(preprocess_of(load_checkpoint(tiny_run[0] / "best.pt")), reduced_decode=2)
    assert train_pre.decode_scale(1920, 1080) == 8
    train_side = eval_tensors(samples, train_pre).numpy()
    with ImageClassifier.from_path(tiny_models[1], ClassifierOptions(reduced_decode=2)) as clf:
        sdk_side = np.stack([clf.preprocess(s.path.read_bytes()) for s in samples])
    mean, std = (np.array(v, np.float32)[:, None, None] for v in (train_pre.mean, train_pre.std))
    normalised = (sdk_side.transpose(0, 3, 1, 2) / np.float32(255) - mean) / std
    np.testing.assert_allclose(normalised, train_side, atol=1e-5, rtol=0)
    cached = load_images(samples, preprocess=train_pre)
    assert all(im.shape == (135, 240, 3) for im in cached)
    np.testing.assert_array_equal(cached[0], decode_image(samples[0].path, preprocess=train_pre))


# -- the benchmark -------------------------------------------------------------------------------
def test_camera_frames_keep_the_photo_in_the_middle(photo):
    from skulens.bench.camera import camera_frame

    for size in ((1920, 1080), (4032, 3024), (100, 300)):
        frame = camera_frame(photo, size)
        assert frame.shape == (size[1], size[0], 3)
    frame = camera_frame(photo, (1920, 1080))
    width = round(348 * 1080 / 300)  # the photo scaled to the frame's height, in the middle
    x0 = (1920 - width) // 2
    middle = cv2.resize(frame[:, x0:x0 + width], photo.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(middle.astype(int) - photo.astype(int)).mean() < 4


def test_camera_benchmark_writes_its_tables(tiny_models, grocery_subset, tmp_path):
    import json

    from skulens.bench.camera import main

    out = tmp_path / "camera"
    assert main([str(tiny_models[1]), "--data", str(grocery_subset), "--limit", "3", "--accuracy", "native",
                 "--timing-images", "2", "--rounds", "1", "--iters", "1", "--reduced-decode", "1,2",
                 "--out", str(out)]) == 0
    result = json.loads((out / "camera.json").read_text())
    assert {r["path"] for r in result["latency"]} == {"full", "reduced r=1", "reduced r=2", "model only"}
    assert {r["frame"] for r in result["accuracy"]} == {"native"} and result["n"] == 3
    scales = result["models"][str(tiny_models[1])]["decode_scales"]["r=2"]
    assert scales == {"native": "1/4", "1080p": "1/8", "12mp": "1/8"}  # 32 px input: 348 / 4 >= 2 x 32
    assert "| full |" in (out / "camera.md").read_text()


def test_new_models_carry_the_reduced_decode_rule(tiny_models, tiny_run):
    """#14: training writes the recommended rule into the contract (and decodes its photos by
    it); export carries it into the model, so camera frames decode at reduced scale by default."""
    from skulens.internal import open_model
    from skulens.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_run[0] / "best.pt")
    assert ckpt["preprocess"]["reduced_decode"] == PreprocessConfig.RECOMMENDED_REDUCED_DECODE
    _, meta = open_model(tiny_models[1], expect_kind="classifier")
    assert meta.preprocess.reduced_decode == PreprocessConfig.RECOMMENDED_REDUCED_DECODE
