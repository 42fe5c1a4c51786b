"""Short fuzzing runs in the suite (seconds): arbitrary and mutated bytes into image decoding and
metadata parsing raise SkulensError or succeed, never anything else; the long coverage-guided
runs are ``python -m skulens.bench.fuzz TARGET --seconds 600`` (issue #12)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from skulens import ImageError, ModelError, SkulensError, decode_image
from skulens.internal import decode_metadata

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install 'skulens[dev]')")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _encoded(photo, ext: str) -> bytes:
    img = cv2.resize(decode_image(photo), (64, 48), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def seeds(grocery_image):
    return [_encoded(grocery_image, ext) for ext in (".jpg", ".png", ".webp", ".bmp", ".tiff", ".ppm")]


def _decode_or_refuse(data: bytes) -> None:
    try:
        img = decode_image(data, max_pixels=4_000_000)
    except SkulensError as exc:
        assert isinstance(exc, ImageError) and str(exc)
        return
    assert img.dtype == np.uint8 and img.ndim in (2, 3) and img.size > 0


@FAST
@given(st.binary(max_size=4096))
def test_random_bytes_decode_or_raise_image_error(data):
    _decode_or_refuse(data)


@FAST
@given(st.data())
def test_mutated_real_images_decode_or_raise_image_error(seeds, data):
    """Real encodings with bytes flipped, cut or inserted: header fields, chunk lengths and
    scan data all get corrupted."""
    buf = bytearray(data.draw(st.sampled_from(seeds)))
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del buf[pos:pos + data.draw(st.integers(1, 64))]
        else:
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        if not buf:
            break
    _decode_or_refuse(bytes(buf))


_SEED = {"skulens.schema_version": "1", "skulens.kind": "classifier", "skulens.model_name": "m",
         "skulens.labels": '["a", "b"]', "skulens.io": "{}",
         "skulens.preprocess": json.dumps({"input_size": [32, 32]})}
json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@FAST
@given(st.sampled_from(sorted(_SEED)), st.one_of(st.text(max_size=64), json_values.map(json.dumps)))
def test_any_metadata_value_parses_or_raises_model_error(key, value):
    try:
        meta = decode_metadata({**_SEED, key: value}, source="fuzz")
    except ModelError as exc:
        assert "fuzz" in str(exc)
        return
    assert meta.labels and all(isinstance(x, str) for x in meta.labels)


def test_coverage_guided_fuzzer_runs_and_reports(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install 'skulens[fuzz]')")
    from skulens.bench.fuzz import run_fuzzer

    summary = run_fuzzer("metadata", tmp_path, seconds=8, model=None, rss_limit_mb=2048, timeout=20, max_len=4096)
    assert summary["executions"] > 1000 and summary["findings"] == 0
    assert json.loads((tmp_path / "metadata" / "summary.json").read_text()) == summary
