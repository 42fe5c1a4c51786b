"""The torch-free SDK: ImageClassifier on real photos, options, errors, import isolation."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

from skulens import (ClassificationResult, ClassifierOptions, ImageClassifier, ImageError, ModelError,
                 decode_image, load_dataset)


def test_import_sdk_does_not_import_torch():
    code = ("import sys, skulens; from skulens import ImageClassifier; import skulens.cli; skulens.cli.build_parser(); "
            "bad = [m for m in ('torch', 'onnx', 'matplotlib', 'fastapi') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_classify_path_bytes_and_arrays_agree(tiny_models, grocery_subset):
    sample = load_dataset(grocery_subset).split("test")[0]
    with ImageClassifier.from_path(tiny_models[1], ClassifierOptions(top_k=3, num_threads=1)) as clf:
        by_path = clf.classify(sample.path)
        by_bytes = clf.classify(sample.path.read_bytes())
        bgr = decode_image(sample.path, preprocess=clf.decode_contract)  # the pixels classify decodes
        by_array = clf.classify(bgr)
        by_bgra = clf.classify(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    assert isinstance(by_path, ClassificationResult) and by_path.source == str(sample.path)
    assert len(by_path.categories) == 3
    scores = [c.score for c in by_path.categories]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
    assert by_path.top.label == clf.labels[by_path.top.index]
    for other in (by_bytes, by_array, by_bgra):
        assert [c.index for c in other.categories] == [c.index for c in by_path.categories]
        np.testing.assert_allclose([c.score for c in other.categories], scores, rtol=1e-5)
    gray = ImageClassifier.from_path(tiny_models[1]).classify(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    assert len(gray.categories) == 5


def test_batch_equals_single_and_respects_max_batch(tiny_models, grocery_subset):
    paths = [s.path for s in load_dataset(grocery_subset).split("test")[:7]]
    with ImageClassifier.from_path(tiny_models[0], ClassifierOptions(max_batch=3)) as clf:
        batch = clf.classify_batch(paths)
        single = [clf.classify(p) for p in paths]
    assert len(batch) == 7
    for b, s in zip(batch, single):
        assert [c.index for c in b.categories] == [c.index for c in s.categories]
        np.testing.assert_allclose([c.score for c in b.categories], [c.score for c in s.categories], atol=1e-5)


def test_top_k_and_score_threshold(tiny_models, grocery_image):
    with ImageClassifier.from_path(tiny_models[0], ClassifierOptions(top_k=1)) as clf:
        assert len(clf.classify(grocery_image).categories) == 1
    with ImageClassifier.from_path(tiny_models[0], ClassifierOptions(top_k=6, score_threshold=0.9999)) as clf:
        assert clf.classify(grocery_image).categories == ()
    with pytest.raises(ValueError, match="top_k"):
        ClassifierOptions(top_k=0)


def test_closed_classifier_and_bad_images(tiny_models, tmp_path):
    clf = ImageClassifier.from_path(tiny_models[0])
    with pytest.raises(ImageError, match="nope.jpg: no such image file"):
        clf.classify(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="uint16"):
        clf.classify(np.zeros((10, 10, 3), np.uint16))
    clf.close()
    with pytest.raises(RuntimeError, match="closed"):
        clf.classify(np.zeros((10, 10, 3), np.uint8))


def test_bad_model_files(tiny_models, tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        ImageClassifier.from_path(tmp_path / "missing.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="empty model file"):
        ImageClassifier.from_path(tmp_path / "empty.onnx")
    (tmp_path / "text.onnx").write_text("this is not a model")
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        ImageClassifier.from_path(tmp_path / "text.onnx")
    data = tiny_models[1].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cut.onnx: not a valid ONNX model or truncated"):
        ImageClassifier.from_path(tmp_path / "cut.onnx")
    with pytest.raises(ModelError, match="not available"):
        ImageClassifier.from_path(tiny_models[0], ClassifierOptions(providers=("NoSuchExecutionProvider",)))


def test_coarse_answer_is_the_top_products_group_and_summed_groups_are_reported_beside_it():
    from skulens.internal import accuracy_report

    # classes 0-2 are apples, 3 is a pear: the pear is the top product of row 0, but the apples
    # together hold more probability
    group_of = np.array([0, 0, 0, 1])
    logits = np.log(np.array([[0.2, 0.2, 0.2, 0.4], [0.05, 0.05, 0.1, 0.8]]))
    report = accuracy_report(logits, np.array([1, 3]), ["a", "b", "c", "pear"], coarse_of=group_of)
    assert report["top1"] == 0.5 and report["coarse_top1"] == 0.5
    assert report["coarse_top1_summed"] == 1.0


def test_classifier_reports_the_coarse_group_as_evaluate_scores_it(tiny_models, grocery_subset):
    from skulens.internal import evaluate

    ds = load_dataset(grocery_subset)
    samples = ds.split("test")
    with ImageClassifier.from_path(tiny_models[1], ClassifierOptions(num_threads=1)) as clf:
        assert clf.coarse_labels and "Apple" in clf.coarse_labels
        results = clf.classify_batch([s.path for s in samples])
        probs = np.exp(clf.logits_batch([s.path for s in samples]).astype(np.float64))
        report = evaluate(clf, ds, "test")
    probs /= probs.sum(axis=1, keepdims=True)
    groups = np.array(clf.metadata.coarse_labels)
    for r, p in zip(results, probs):  # the top product's group, scored by the group's summed probability
        assert r.coarse.label == groups[r.top.index]
        assert r.coarse.score == pytest.approx(p[groups == r.coarse.label].sum(), abs=1e-5)
        assert r.coarse.score >= r.top.score - 1e-6
        assert r.to_dict()["coarse"]["label"] == r.coarse.label
    truth = [ds.coarse_labels[s.label] for s in samples]
    assert report["coarse_top1"] == pytest.approx(np.mean([r.coarse.label == t for r, t in zip(results, truth)]))
    summed = [max(set(groups), key=lambda g: p[groups == g].sum()) for p in probs]
    assert report["coarse_top1_summed"] == pytest.approx(np.mean([g == t for g, t in zip(summed, truth)]))


def test_proc_fields_are_read_by_name_and_missing_ones_are_none(tmp_path):
    from skulens._io import proc_field
    from skulens.internal import proc_bytes

    status = tmp_path / "status"
    status.write_text("Name:\tpython\nUmask:\t0022\nVmSize:\t  123456 kB\nVmSizeX:\t1 kB\nVmRSS:\n")
    assert proc_field("Umask", str(status)) == "0022" and proc_field("Name", str(status)) == "python"
    assert proc_bytes("VmSize", str(status)) == 123456 * 1024  # not the VmSizeX line
    assert proc_bytes("VmRSS", str(status)) is None and proc_bytes("VmHWM", str(status)) is None
    assert proc_bytes("Name", str(status)) is None  # not a number
    assert proc_bytes("VmSize", str(tmp_path / "absent")) is None
