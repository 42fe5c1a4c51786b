"""Gallery search backends: exact numpy search against a brute-force reference, HNSW against
exact, backend choice, argument errors, the missing-extra message and the benchmark's shape."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from sdk._errors import MissingExtraError
from sdk._search import AUTO_HNSW_FROM, ExactIndex, HnswIndex, build_index
from runtime_bench.search_bench import gallery_like, search_benchmark


def test_exact_index_matches_brute_force_with_ties_by_id():
    x, q = gallery_like(700, 24, 20)
    scores, ids = ExactIndex(x, chunk=128).search(q, 7)  # several chunks
    ref = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :7]
    assert (ids == ref).all() and np.all(np.diff(scores, axis=1) <= 0)
    tied = np.repeat(x[:1], 4, axis=0)
    assert ExactIndex(tied).search(x[:1], 3)[1].tolist() == [[0, 1, 2]]
    assert ExactIndex(x[:3]).search(q[:2], 10)[1].shape == (2, 3)  # k > N: all of them


def test_hnsw_equals_exact_on_product_like_vectors():
    pytest.importorskip("usearch")
    x, q = gallery_like(2000, 64, 100)
    exact, hnsw = ExactIndex(x).search(q, 5), HnswIndex(x).search(q, 5)
    assert (exact[1] == hnsw[1]).mean() >= 0.99 and (exact[1][:, 0] == hnsw[1][:, 0]).all()
    assert np.allclose(exact[0][:, 0], hnsw[0][:, 0], atol=1e-5)


def test_backend_choice_and_missing_extra(monkeypatch):
    x, _ = gallery_like(50, 8, 1)
    assert build_index(x, "auto").backend == "exact" and build_index(x, "exact").backend == "exact"
    assert AUTO_HNSW_FROM > len(x)
    monkeypatch.setitem(sys.modules, "usearch", None)
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    with pytest.raises(MissingExtraError, match=r"skulens\[index\]"):
        build_index(x, "hnsw")


@pytest.mark.parametrize("bad, match", [
    (np.zeros(5, np.float32), "2-D"), (np.zeros((3, 4), np.int64), "floating"),
    (np.full((2, 8), np.nan, np.float32), "NaN"), (np.zeros((0, 8), np.float32), "empty")])
def test_bad_index_vectors_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ExactIndex(bad)


def test_bad_queries_are_refused():
    x, q = gallery_like(20, 8, 2)
    idx = ExactIndex(x)
    with pytest.raises(ValueError, match="dimension"):
        idx.search(np.ones((1, 9), np.float32), 1)
    with pytest.raises(ValueError, match="k must"):
        idx.search(q, 0)
    with pytest.raises(ValueError, match="backend"):
        build_index(x, "annoy")


def test_search_benchmark_reports_every_figure():
    r = search_benchmark(sizes=(300,), dim=16, queries=5)
    row = r["rows"][0]
    assert row["entries"] == 300 and row["exact_query_ms"] > 0 and row["enrol_5_photos_ms"] >= 0
    if "hnsw_query_ms" in row:
        assert 0 <= row["hnsw_recall@1"] <= 1 and row["hnsw_build_s"] >= 0
