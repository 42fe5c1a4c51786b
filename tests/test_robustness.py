"""skulens.bench.robustness: the corruptions (pure, deterministic, really corrupting), the
evaluation on the tiny exported model over real Grocery photos, the report files and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from skulens.bench.robustness import (CORRUPTIONS, GROUPS, SMALL_SCALE, evaluate_robustness, markdown,
                                      select_corruptions, small_in_frame, write_report)
from skulens import ClassifierOptions, DatasetError, ImageClassifier, decode_image, load_dataset
from skulens._evaluate import evaluate

EXPECTED = {"dark", "bright", "low_contrast", "warm_cast", "cool_cast", "rotation", "perspective",
            "small_in_frame", "low_resolution", "gaussian_noise", "blur", "jpeg"}


@pytest.fixture(scope="module")
def photo(grocery_image):
    return decode_image(grocery_image)


@pytest.fixture(scope="module")
def int8(tiny_models):
    return tiny_models[1]


@pytest.fixture(scope="module")
def full(int8, grocery_subset):
    """Every corruption over the whole (small) test split of the real subset."""
    return evaluate_robustness(int8, grocery_subset, split="test")


def test_registry_covers_the_four_groups():
    assert set(CORRUPTIONS) == EXPECTED == set(GROUPS)
    assert set(GROUPS.values()) == {"lighting", "angle", "scale", "sensor"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corruption_changes_pixels_keeps_shape_and_is_deterministic(name, photo):
    fn = CORRUPTIONS[name]
    before = photo.copy()
    out = fn(photo, np.random.default_rng(7))
    assert np.array_equal(photo, before), "a corruption must not modify its input"
    assert out.dtype == np.uint8 and out.shape == photo.shape
    assert np.abs(out.astype(np.int16) - photo).mean() > 1.0, f"{name} barely changed the image"
    assert np.array_equal(out, fn(photo, np.random.default_rng(7)))


def test_random_corruptions_depend_on_the_seed(photo):
    for name in ("gaussian_noise", "perspective"):
        a = CORRUPTIONS[name](photo, np.random.default_rng(1))
        b = CORRUPTIONS[name](photo, np.random.default_rng(2))
        assert not np.array_equal(a, b), name


def test_colour_casts_follow_bgr_order():
    grey = np.full((8, 8, 3), 120, np.uint8)
    warm, cool = CORRUPTIONS["warm_cast"](grey, None), CORRUPTIONS["cool_cast"](grey, None)
    assert warm[0, 0, 2] > 120 > warm[0, 0, 0] and warm[0, 0, 1] == 120  # R up, B down
    assert cool[0, 0, 0] > 120 > cool[0, 0, 2]
    assert CORRUPTIONS["dark"](grey, None).max() < 60 and CORRUPTIONS["bright"](grey, None).min() == 192


def test_small_in_frame_shrinks_the_product():
    img = np.zeros((200, 200, 3), np.uint8)
    img[50:150, 50:150] = 255  # a bright 100 px "product" in the middle
    out = small_in_frame(img, np.random.default_rng(0))
    ys, xs = np.nonzero(out[..., 1] > 200)
    side = round(100 * SMALL_SCALE)
    assert abs((ys.max() - ys.min() + 1) - side) <= 2 and abs((xs.max() - xs.min() + 1) - side) <= 2
    assert abs((ys.min() + ys.max()) / 2 - 99.5) <= 1.5  # still centred
    assert out[:30].max() < 200 and out.shape == img.shape  # the canvas holds no copy of the product


def test_evaluation_reports_every_corruption(full, grocery_subset):
    assert set(full["corruptions"]) == EXPECTED
    assert full["n"] == len(load_dataset(grocery_subset).split("test"))
    json.dumps(full)  # JSON-able
    assert 0.0 < full["clean_top1"] <= 1.0
    for name, r in full["corruptions"].items():
        assert 0.0 <= r["top1"] <= 1.0 and r["group"] == GROUPS[name]
        assert r["relative"] == pytest.approx(r["top1"] / full["clean_top1"])
        assert r["relative"] >= 0.0  # may exceed 1 when a corruption happens to help
    worst = min(r["top1"] for r in full["corruptions"].values())
    assert full["corruptions"][full["worst"]]["top1"] == worst
    assert full["min_relative"] == pytest.approx(worst / full["clean_top1"])


def test_clean_top1_matches_skulens_eval(full, int8, grocery_subset):
    with ImageClassifier.from_path(int8, ClassifierOptions(num_threads=1)) as clf:
        ref = evaluate(clf, load_dataset(grocery_subset), "test")
    assert full["clean_top1"] == ref["top1"]


def test_identity_gives_clean_and_a_blank_image_gives_chance(int8, grocery_subset):
    grey = lambda im, rng: np.full_like(im, 128)  # noqa: E731 - every image becomes the same
    r = evaluate_robustness(int8, grocery_subset, limit=12,
                            corruptions={"identity": lambda im, rng: im, "grey": grey})
    assert r["n"] == 12
    assert r["corruptions"]["identity"]["top1"] == r["clean_top1"]
    # (relative is None where the near-chance tiny model gets none of the 12 clean images right)
    assert r["corruptions"]["identity"]["relative"] == (1.0 if r["clean_top1"] else None)
    assert r["corruptions"]["grey"]["group"] == "custom"
    # one prediction for every image, and the 12 evenly spaced test images hold each of the 6
    # classes twice: whichever class it is, exactly 2 of 12 are right
    assert r["corruptions"]["grey"]["top1"] == pytest.approx(2 / 12)


def test_corrupted_images_are_what_gets_classified(int8, grocery_subset, monkeypatch):
    """Spy on decoding and on the model: each image is decoded once, and per batch the model
    sees the clean images, then each corruption's output."""
    import skulens.bench.robustness as rb

    decoded, batches = [], []
    real_decode, real_logits = rb.decode_image, ImageClassifier.logits_batch
    monkeypatch.setattr(rb, "decode_image", lambda src, **kw: decoded.append(src) or real_decode(src, **kw))
    monkeypatch.setattr(ImageClassifier, "logits_batch",
                        lambda self, ims: batches.append([im.copy() for im in ims]) or real_logits(self, ims))
    monkeypatch.setattr(rb, "BATCH", 4)
    seen = []
    spy = lambda im, rng: seen.append((im.copy(), rng.random())) or np.full_like(im, 77)  # noqa: E731
    r = evaluate_robustness(int8, grocery_subset, limit=6, seed=5,
                            corruptions={"spy": spy, "jpeg": CORRUPTIONS["jpeg"]})
    assert r["n"] == 6 and len(decoded) == 6 and len(set(map(str, decoded))) == 6
    assert [len(b) for b in batches] == [4, 4, 4, 2, 2, 2]  # clean, spy, jpeg for each batch of 4
    clean = batches[0] + batches[3]
    assert all(np.array_equal(a, b) for a, (b, _) in zip(clean, seen))  # the decoded image goes in
    assert all((im == 77).all() for im in batches[1] + batches[4])  # ... and its corruption is scored
    assert not np.array_equal(batches[2][0], clean[0])
    picked = [int(i) for i in np.linspace(0, 23, 6).round()]
    assert [u for _, u in seen] == [np.random.default_rng([5, i]).random() for i in picked]


def test_limit_and_seed_are_deterministic(int8, grocery_subset):
    kw = dict(corruptions=["gaussian_noise", "rotation"], limit=6)
    a = evaluate_robustness(int8, grocery_subset, seed=3, **kw)
    assert a == evaluate_robustness(int8, grocery_subset, seed=3, **kw)
    assert list(a["corruptions"]) == ["gaussian_noise", "rotation"] and a["n"] == 6


def test_bad_configuration_raises(int8, grocery_subset):
    with pytest.raises(ValueError, match="unknown corruption.*fog"):
        evaluate_robustness(int8, grocery_subset, corruptions="dark,fog")
    with pytest.raises(ValueError, match="no corruptions"):
        select_corruptions([])
    with pytest.raises(ValueError, match="not callables"):
        select_corruptions({"x": 3})
    with pytest.raises(ValueError, match="limit"):
        evaluate_robustness(int8, grocery_subset, limit=0)
    with pytest.raises(DatasetError, match="no 'nosuch' split"):
        evaluate_robustness(int8, grocery_subset, split="nosuch")
    with pytest.raises(ValueError, match="must return a uint8"):
        evaluate_robustness(int8, grocery_subset, limit=2, corruptions={"f": lambda im, rng: im / 2})


def test_write_report_files(full, tmp_path):
    written = write_report(full, tmp_path / "rep")
    assert sorted(p.name for p in written) == ["robustness.json", "robustness.md", "robustness.png"]
    assert json.loads((tmp_path / "rep" / "robustness.json").read_text()) == full
    md = (tmp_path / "rep" / "robustness.md").read_text()
    assert md == markdown(full) and "| corruption | group | top-1 | relative to clean |" in md
    assert all(f"| {name} | {GROUPS[name]} |" in md for name in EXPECTED)
    assert (tmp_path / "rep" / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_the_three_files(int8, grocery_subset, tmp_path, capsys):
    from skulens.cli import main

    out = tmp_path / "cli"
    assert main(["robustness", str(int8), "--data", str(grocery_subset), "--corruptions", "dark,jpeg",
                 "--limit", "6", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| dark | lighting |" in printed and "| jpeg | sensor |" in printed
    assert {p.name for p in out.iterdir()} == {"robustness.json", "robustness.md", "robustness.png"}
    saved = json.loads((out / "robustness.json").read_text())
    assert list(saved["corruptions"]) == ["dark", "jpeg"] and saved["n"] == 6
    assert main(["robustness", str(int8), "--data", str(grocery_subset), "--limit", "2", "--json",
                 "--corruptions", "blur", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2
    assert main(["robustness", str(int8), "--data", str(grocery_subset), "--corruptions", "fog",
                 "--out", str(out)]) == 2
    assert "unknown corruption" in capsys.readouterr().err


def test_cli_flags_mirror_the_python_api():
    import inspect

    from skulens.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    actions = [a for a in sub.choices["robustness"]._actions if a.dest != "help"]
    assert all(a.help for a in actions)
    params = set(inspect.signature(evaluate_robustness).parameters) - {"model_path"}
    assert {a.dest for a in actions} == params | {"model", "out", "json"}
