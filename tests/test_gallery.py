"""Product galleries on real photos with the tiny exported models: the embedding output,
enrol/remove round trips, model binding, atomic and tamper-proof files, "unknown" thresholds,
exact vs index search, and the CLI and service faces."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from skulens import ClassifierOptions, ImageClassifier, load_dataset
from skulens._errors import GalleryError
from skulens._gallery import ProductGallery
from skulens._unknown import auroc, threshold_for_precision


@pytest.fixture(scope="module")
def photos(grocery_subset):
    ds = load_dataset(grocery_subset)
    by_class = {name: [s.path for s in ds.split("train") if s.label == c] for c, name in enumerate(ds.classes)}
    return ds, by_class


@pytest.fixture(scope="module")
def gallery_file(tiny_models, photos, tmp_path_factory):
    """A gallery of every subset class (train photos) made with the tiny INT8 model."""
    _, int8, _ = tiny_models
    _, by_class = photos
    with ImageClassifier.from_path(int8) as clf:
        g = ProductGallery.for_model(clf)
        for label, paths in by_class.items():
            assert g.add(clf, label, paths).added == len(paths)
    g.calibrate()  # a 2-epoch tiny model's embeddings rarely reach 95 %: None is a valid answer here
    return g.save(tmp_path_factory.mktemp("gallery") / "shop.gallery")


def test_models_export_a_unit_embedding_declared_in_the_metadata(tiny_models, grocery_image):
    fp32, int8, report = tiny_models
    for path in (fp32, int8):
        with ImageClassifier.from_path(path) as clf:
            spec = clf.embedding_spec
            assert spec["source"] == "pooled" and spec["dim"] == report["embedding"]["dim"] == spec["features"]
            e = clf.embed_batch([grocery_image, grocery_image])
            assert e.shape == (2, spec["dim"]) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert report["parity_max_abs_embedding_diff"] < 1e-4
    with ImageClassifier.from_path(fp32) as a, ImageClassifier.from_path(int8) as b:
        assert float(a.embed(grocery_image) @ b.embed(grocery_image)) > 0.95  # INT8 keeps the direction
        x = b.preprocess(grocery_image)[None]
        logits, emb = b.run_logits_and_embedding(x)  # both outputs from one model call
        np.testing.assert_array_equal(logits, b.run_logits(x))
        np.testing.assert_array_equal(emb, b.run_embedding(x))


def test_enrol_search_remove_round_trip(gallery_file, tiny_models, photos):
    _, int8, _ = tiny_models
    _, by_class = photos
    g = ProductGallery.load(gallery_file)
    assert g.products() == {label: len(p) for label, p in by_class.items()}
    label, paths = next(iter(by_class.items()))
    g.scoring = "max"  # a product scores its best photo: an enrolled photo finds itself
    by_photo = g.save(gallery_file.with_name("max.gallery"))
    with ImageClassifier.from_path(int8, ClassifierOptions(gallery=str(by_photo), top_k=3)) as clf:
        r = clf.classify(paths[0])
        assert r.top.label == label and r.top.score == pytest.approx(1.0, abs=1e-5)
        assert r.extra["by"] == "gallery" and len(r.categories) == 3 and not r.unknown
        e = clf.embed(paths[0])
    g = ProductGallery.load(gallery_file)  # default scoring: the cosine to the product's mean photo
    mean = g.vectors[[i for i, x in enumerate(g.entries) if x["label"] == label]].mean(0)
    hits = dict(g.search(e[None], len(by_class))[0])
    assert g.scoring == "mean" and hits[label] == pytest.approx(float(e @ mean / np.linalg.norm(mean)), abs=1e-5)
    assert g.remove(label) == len(paths)
    with pytest.raises(GalleryError, match="no product"):
        g.remove(label)
    g.save(gallery_file.with_name("fewer.gallery"))
    again = ProductGallery.load(gallery_file.with_name("fewer.gallery"))
    assert label not in again.products() and len(again) == len(g)
    assert again.search(again.vectors[:1], 1)[0][0][0] == again.entries[0]["label"]


def test_duplicates_are_detected_and_conflicts_refused(gallery_file, tiny_models, photos):
    _, int8, _ = tiny_models
    _, by_class = photos
    (a, pa), (b, _) = list(by_class.items())[:2]
    g = ProductGallery.load(gallery_file)
    with ImageClassifier.from_path(int8) as clf:
        rep = g.add(clf, a, [pa[0], pa[0]])
        assert rep.added == 0 and len(rep.duplicates) == 2
        with pytest.raises(GalleryError, match="already enrolled"):
            g.add(clf, b, [pa[0]])
        with pytest.raises(GalleryError, match="label"):
            g.add(clf, "  ", [pa[0]])


def test_another_model_is_refused(gallery_file, tiny_models, tiny_float_models):
    fp32, _, _ = tiny_models
    with pytest.raises(GalleryError, match="another model"):
        ImageClassifier.from_path(fp32, ClassifierOptions(gallery=str(gallery_file)))
    with pytest.raises(GalleryError, match="another model"):
        ImageClassifier.from_path(tiny_float_models[1], ClassifierOptions(gallery=str(gallery_file)))


def test_a_failed_save_leaves_the_old_file(gallery_file, monkeypatch, tmp_path):
    dst = tmp_path / "g.gallery"
    dst.write_bytes(gallery_file.read_bytes())
    g = ProductGallery.load(dst)
    g.remove(next(iter(g.products())))

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        g.save(dst)
    assert dst.read_bytes() == gallery_file.read_bytes() and os.listdir(tmp_path) == ["g.gallery"]


def test_tampered_or_foreign_files_are_refused(gallery_file, tmp_path):
    data = gallery_file.read_bytes()
    cases = {"truncated": data[:len(data) // 2], "garbage": b"\x00" * 100, "empty": b""}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(GalleryError, match="gallery"):
            ProductGallery.load(tmp_path / name)
    g = ProductGallery.load(gallery_file)
    g.vectors = g.vectors * 3  # not unit vectors any more
    g.save(tmp_path / "scaled")
    with pytest.raises(GalleryError, match="unit vectors"):
        ProductGallery.load(tmp_path / "scaled")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(GalleryError, match="not a skulens gallery"):
        ProductGallery.load(tmp_path / "other.npz")
    with pytest.raises(GalleryError, match="no such"):
        ProductGallery.load(tmp_path / "missing.gallery")


def test_threshold_for_precision_and_auroc():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 0, 1, 0], bool)
    assert threshold_for_precision(scores, correct, 1.0) == 0.7
    assert threshold_for_precision(scores, correct, 0.8) == 0.5  # 4 of 5 right
    assert threshold_for_precision(scores, ~correct, 0.9) is None
    assert threshold_for_precision([0.5, 0.5], [True, False], 0.9) is None  # ties go together
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0 and auroc([0.1], [0.9]) == 0.0 and auroc([0.5], [0.5]) == 0.5
    with pytest.raises(ValueError):
        threshold_for_precision([np.nan], [True])


def test_unknown_follows_the_gallery_threshold(gallery_file, tiny_models, photos):
    _, int8, _ = tiny_models
    _, by_class = photos
    g = ProductGallery.load(gallery_file)
    path = next(iter(by_class.values()))[0]
    g.unknown = {"score": "cosine", "threshold": 1.01}  # what the classifier reads from the gallery file
    strict = g.save(gallery_file.with_name("strict.gallery"))
    with ImageClassifier.from_path(int8, ClassifierOptions(gallery=str(strict))) as clf:
        assert clf.unknown_threshold == 1.01 and clf.classify(path).unknown
    for threshold, unknown in ((1.01, True), (-1.0, False)):
        with ImageClassifier.from_path(int8, ClassifierOptions(gallery=str(gallery_file),
                                                               unknown_threshold=threshold)) as clf:
            assert clf.classify(path).unknown is unknown
    with ImageClassifier.from_path(int8, ClassifierOptions(unknown_threshold=1.01)) as clf:
        r = clf.classify(path)  # the model's own softmax: below 1.01 always
        assert r.unknown and r.to_dict()["unknown"] is True and r.top is not None
    with ImageClassifier.from_path(int8, ClassifierOptions(unknown_threshold=1.01, reject_unknown=False)) as clf:
        assert not clf.classify(path).unknown


def test_calibration_reaches_its_precision_on_separable_products():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 32))
    vecs = np.repeat(centres, 5, axis=0) + 0.15 * rng.standard_normal((30, 32))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    g = ProductGallery("sha", {"dim": 32, "output": "embedding"}, backend="exact")
    for p in range(5):  # product 5 stays out: its photos are unknown queries
        g.add_embeddings(f"p{p}", vecs[p * 5:p * 5 + 5], [f"{p}-{i}" for i in range(5)], [""] * 5)
    cal = g.calibrate(0.95)
    assert cal is not None and cal["calibration_precision"] >= 0.95
    known = [h[0][1] for h in g.search(vecs[:25], 1)]
    unknown = [h[0][1] for h in g.search(vecs[25:], 1)]
    assert min(known) >= g.unknown_threshold > max(unknown)


def test_calibration_needs_two_products_with_siblings(tiny_models, grocery_image):
    _, int8, _ = tiny_models
    with ImageClassifier.from_path(int8) as clf:
        g = ProductGallery.for_model(clf)
        g.add(clf, "only", [grocery_image])
        assert g.calibrate() is None and g.unknown_threshold is None
        with pytest.raises(GalleryError, match="empty"):
            ProductGallery.for_model(clf).search(np.zeros((1, g.dim), np.float32))


def test_index_search_equals_exact_search(gallery_file, tiny_models, photos, grocery_subset):
    pytest.importorskip("faiss")
    _, int8, _ = tiny_models
    ds, _ = photos
    with ImageClassifier.from_path(int8) as clf:
        queries = clf.embed_batch([s.path for s in ds.split("test")])
    exact = ProductGallery.load(gallery_file, backend="exact").search(queries, 3)
    index = ProductGallery.load(gallery_file, backend="hnsw").search(queries, 3)
    assert [[lab for lab, _ in r] for r in exact] == [[lab for lab, _ in r] for r in index]
    assert np.allclose([[s for _, s in r] for r in exact], [[s for _, s in r] for r in index], atol=1e-5)


def test_gallery_cli_create_add_list_remove_and_predict(tiny_models, grocery_subset, photos, tmp_path, capsys):
    from skulens.cli import main

    _, int8, _ = tiny_models
    _, by_class = photos
    g = tmp_path / "cli.gallery"
    assert main(["-q", "gallery", "create", str(int8), "--data", str(grocery_subset), "--per-class", "3",
                 "--out", str(g)]) == 0
    label, paths = next(iter(by_class.items()))
    paths = [str(p) for p in paths]
    assert main(["-q", "gallery", "add", str(g), str(int8), "--label", label, paths[5], paths[0]]) == 0
    out = capsys.readouterr().out
    assert "already enrolled" in out and "1 photos added" in out  # paths[0] came with create
    assert main(["-q", "gallery", "add", str(g), str(int8), "--label", "New Cola 0.5l", paths[0]]) == 2
    assert "already enrolled as" in capsys.readouterr().err
    assert main(["-q", "gallery", "add", str(g), str(int8), "--label", "New Cola 0.5l", paths[6]]) == 0
    capsys.readouterr()
    assert main(["-q", "gallery", "list", str(g), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["products"]["New Cola 0.5l"] == 1 and listed["products"][label] == 4
    assert main(["-q", "predict", str(int8), paths[6], "--gallery", str(g), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # the enrolled photo finds its new product
    assert result["categories"][0]["label"] == "New Cola 0.5l" and "unknown" in result
    assert main(["-q", "gallery", "remove", str(g), "--label", "New Cola 0.5l"]) == 0
    assert "New Cola 0.5l" not in ProductGallery.load(g).products()
    assert main(["-q", "gallery", "remove", str(g), "--label", "New Cola 0.5l"]) == 2  # a clear error
    assert "no product" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_service_enrols_and_delists_behind_the_token(gallery_file, tiny_models, photos, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from skulens.serve import ServeConfig, create_app

    _, int8, _ = tiny_models
    _, by_class = photos
    dst = tmp_path / "svc.gallery"
    dst.write_bytes(gallery_file.read_bytes())
    (label, paths), (other, _) = list(by_class.items())[:2]
    photo = paths[0].read_bytes()
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(create_app(ServeConfig(model=str(int8), gallery=str(dst), token="s3cret"))) as c:
        assert c.post("/v1/gallery/products", params={"label": "x"}, content=photo).status_code == 401
        r = c.post("/v1/gallery/products", params={"label": other}, content=photo, headers=auth)
        assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
        r = c.post("/v1/gallery/products", params={"label": label}, content=photo, headers=auth)
        assert r.status_code == 200 and r.json()["duplicate"] is True
        r = c.post("/v1/classify", content=photo, headers=auth).json()
        assert r["by"] == "gallery" and r["categories"][0]["label"] == label and "unknown" in r
        r = c.delete("/v1/gallery/products", params={"label": label}, headers=auth)
        assert r.status_code == 200 and r.json()["removed"] == len(paths)
        assert label not in ProductGallery.load(dst).products()  # saved
        assert c.delete("/v1/gallery/products", params={"label": label}, headers=auth).status_code == 404
        assert c.get("/v1/gallery", headers=auth).json()["photos"] == len(ProductGallery.load(dst))
    with TestClient(create_app(ServeConfig(model=str(int8), gallery=str(dst), token=None))) as c:
        r = c.post("/v1/gallery/products", params={"label": "x"}, content=photo)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_video_frames_are_classified_by_gallery_and_reported_unknown(gallery_file, tiny_models, photos):
    import cv2

    from skulens import FrameClassifier, FrameClassifierOptions

    _, int8, _ = tiny_models
    _, by_class = photos
    label, paths = next(iter(by_class.items()))
    frames = [cv2.imread(str(p)) for p in paths[:3]]
    for threshold, unknown in ((-1.0, False), (1.01, True)):
        opts = FrameClassifierOptions(running_mode="VIDEO", smoothing="mean", window=2, classifier=ClassifierOptions(
            gallery=str(gallery_file), unknown_threshold=threshold))
        with FrameClassifier.from_path(int8, opts) as fc:
            results = [fc.classify_for_video(f, 40.0 * i) for i, f in enumerate(frames)]
        assert all(r.unknown is unknown and r.classification.extra["by"] == "gallery" for r in results)
        assert all((r.label == "unknown") is unknown for r in results)
    with pytest.raises(ValueError, match="majority"):
        FrameClassifier.from_path(int8, FrameClassifierOptions(running_mode="VIDEO", smoothing="majority",
                                                               classifier=ClassifierOptions(gallery=str(gallery_file))))
