"""Gallery search backends: exact numpy search against a brute-force reference, HNSW against
exact, backend choice, argument errors, the missing-extra message and the benchmark's shape."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from skulens.bench.search_bench import gallery_like, search_benchmark
from skulens._errors import MissingExtraError
from skulens._search import AUTO_HNSW_FROM, ExactIndex, HnswIndex, build_index, hnsw_available


def _reference(x, q, k):
    """Brute force: full similarity matrix, stable sort (equal scores keep the lower id first)."""
    sims = q @ x.T
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


@pytest.mark.parametrize("block", [1 << 22, 128, 7])  # one block, entry blocks, query blocks too
def test_exact_index_matches_brute_force(block):
    x, q = gallery_like(700, 24, 20)
    index = ExactIndex(x, block_elements=block)
    scores, ids = index.search(q, 7)
    ref_s, ref_i = _reference(x, q, 7)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (20, 7)
    assert (ids == ref_i).all() and np.allclose(scores, ref_s, atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert index.backend == "exact" and len(index) == 700 and index.dim == 24


def test_exact_index_breaks_ties_by_lower_id_across_blocks():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[[3, 17, 25, 38]] = x[30]  # five copies of one vector, spread over several blocks
    for block in (1 << 22, 10, 3):
        scores, ids = ExactIndex(x, block_elements=block).search(x[30:31], 3)
        assert ids.tolist() == [[3, 17, 25]] and np.allclose(scores, scores[0, 0])
    assert ExactIndex(np.ones((6, 4), np.float32)).search(np.ones((2, 4), np.float32), 4)[1].tolist() == \
        [[0, 1, 2, 3]] * 2


def test_k_larger_than_gallery_returns_everything_sorted():
    x, q = gallery_like(3, 8, 2)
    scores, ids = ExactIndex(x).search(q, 10)
    assert ids.shape == (2, 3) and (ids == _reference(x, q, 3)[1]).all()
    assert sorted(ids[0].tolist()) == [0, 1, 2]


def test_exact_index_copies_its_vectors():
    x, q = gallery_like(50, 8, 3)
    index = ExactIndex(x)
    before = index.search(q, 3)
    x[:] = 0
    after = index.search(q, 3)
    assert (before[1] == after[1]).all() and index.vectors.flags.c_contiguous


def test_hnsw_equals_exact_on_product_like_vectors():
    pytest.importorskip("faiss")
    x, q = gallery_like(2000, 64, 100)
    exact = ExactIndex(x).search(q, 5)
    hnsw_index = HnswIndex(x)
    hnsw = hnsw_index.search(q, 5)
    assert hnsw_index.backend == "faiss" and len(hnsw_index) == 2000 and hnsw_index.dim == 64
    assert (exact[1][:, 0] == hnsw[1][:, 0]).all() and (exact[1] == hnsw[1]).all()
    assert np.allclose(exact[0], hnsw[0], atol=1e-5)
    again = HnswIndex(x).search(q, 5)  # one-thread build: the same graph, the same answers
    assert (again[1] == hnsw[1]).all() and (again[0] == hnsw[0]).all()
    assert hnsw_index.search(q[:2], 5000)[1].shape == (2, 2000)  # k > N


def test_auto_backend_choice(monkeypatch):
    x, _ = gallery_like(50, 8, 1)
    assert AUTO_HNSW_FROM == 20_000
    assert build_index(x).backend == "exact" and build_index(x, "exact").backend == "exact"
    assert build_index(x, "auto", expansion_search=64).backend == "exact"  # HNSW options dropped
    big = np.tile(x, (AUTO_HNSW_FROM // len(x), 1))
    if hnsw_available():
        import skulens._search as search

        built = []
        monkeypatch.setattr(search, "HnswIndex", lambda v, **kw: built.append((len(v), kw)) or "hnsw")
        assert build_index(big, "auto", expansion_search=64, block_elements=10) == "hnsw"
        assert built == [(AUTO_HNSW_FROM, {"expansion_search": 64})]
        monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "faiss", None)  # the extra is missing: auto falls back to exact
    assert build_index(big, "auto").backend == "exact"


def test_missing_extra_names_the_install_command(monkeypatch):
    x, _ = gallery_like(50, 8, 1)
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert not hnsw_available()
    with pytest.raises(MissingExtraError, match=r"pip install 'skulens\[index\]'"):
        build_index(x, "hnsw")
    with pytest.raises(ImportError):  # MissingExtraError is an ImportError too
        HnswIndex(x)


@pytest.mark.parametrize("bad, match", [
    (np.zeros(5, np.float32), "2-D"), (np.zeros((2, 3, 4), np.float32), "2-D"),
    (np.zeros((3, 4), np.int64), "floating"), (np.zeros((3, 4), bool), "floating"),
    (np.zeros((3, 0), np.float32), "dimension 0"),
    (np.full((2, 8), np.nan, np.float32), "NaN"), (np.zeros((0, 8), np.float32), "empty")])
def test_bad_index_vectors_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ExactIndex(bad)
    with pytest.raises(ValueError, match=match):
        build_index(bad, "exact")


def test_bad_queries_and_arguments_are_refused():
    x, q = gallery_like(20, 8, 2)
    index = ExactIndex(x)
    with pytest.raises(ValueError, match="dimension 9 but the index holds dimension 8"):
        index.search(np.ones((1, 9), np.float32), 1)
    with pytest.raises(ValueError, match="2-D"):
        index.search(q[0], 1)
    with pytest.raises(ValueError, match="floating"):
        index.search(q.astype(np.int32), 1)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 8), np.inf, np.float32), 1)
    for k in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(q, k)
    with pytest.raises(ValueError, match="backend must be one of"):
        build_index(x, "annoy")
    with pytest.raises(ValueError, match="unknown index options"):
        build_index(x, "auto", nprobe=3)
    with pytest.raises(ValueError, match="block_elements"):
        ExactIndex(x, block_elements=0)


def test_bad_hnsw_arguments_are_refused():
    pytest.importorskip("faiss")
    x, q = gallery_like(30, 8, 2)
    with pytest.raises(ValueError, match="connectivity"):
        HnswIndex(x, connectivity=0)
    with pytest.raises(ValueError, match="build_threads"):
        HnswIndex(x, build_threads=0)
    parallel = HnswIndex(x, build_threads=2)  # a parallel build still answers exactly on a tiny set
    assert parallel.build_threads == 2 and parallel.threads == 1
    assert (parallel.search(q, 3)[1] == ExactIndex(x).search(q, 3)[1]).all()
    with pytest.raises(ValueError, match="empty"):
        HnswIndex(x[:0])
    with pytest.raises(ValueError, match="dimension"):
        HnswIndex(x).search(np.ones((1, 4), np.float32), 1)


def test_search_benchmark_reports_every_figure():
    r = search_benchmark(sizes=(300,), dim=16, queries=5)
    row = r["rows"][0]
    assert row["entries"] == 300 and row["dim"] == 16 and row["exact_query_ms"] > 0
    assert row["enrol_5_photos_ms"] >= 0 and r["k"] == 5 and r["threads"] == 1
    if hnsw_available():
        assert {"hnsw_build_s", "hnsw_query_ms", "hnsw_recall@1", "hnsw_recall@5"} <= set(row)
        assert 0 <= row["hnsw_recall@1"] <= 1 and 0 <= row["hnsw_recall@5"] <= 1 and row["hnsw_build_s"] >= 0
        assert r["hnsw"]["library"] == "faiss-cpu"


def test_retrieval_protocol_metrics_on_hand_made_embeddings():
    """skulens.bench.retrieval's figures from embeddings whose answers are known: each class a
    direction, queries near their class's direction; one class's queries point elsewhere."""
    from skulens.bench.retrieval import _describe, retrieval_metrics

    rng = np.random.default_rng(0)
    n_cls, dim = 6, 16
    names = [f"p{c}" for c in range(n_cls)]
    centres = np.eye(dim, dtype=np.float32)[:n_cls]
    def views(c, n, noise):
        v = centres[c] + noise * rng.standard_normal((n, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    train_y = np.repeat(np.arange(n_cls), 6)
    train = np.concatenate([views(c, 6, 0.05) for c in range(n_cls)])
    test_y = np.repeat(np.arange(n_cls), 4)
    test = np.concatenate([views(c, 4, 0.05) for c in range(n_cls)])
    test[test_y == 0] = views(1, 4, 0.05)  # new product 0's photos look like new product 1
    new, known = np.arange(3), np.arange(3, n_cls)
    logits = rng.standard_normal((len(test), len(known))).astype(np.float32)
    r = retrieval_metrics({"output": "embedding", "dim": dim}, train, train_y, test, test_y, logits, names,
                          new, known, names[3:], None, shots=(1, 5, None), draws=3)
    assert r["new_products"]["5"]["recall@1"] == pytest.approx(2 / 3)  # p0's queries all go to p1
    assert r["new_products"]["5"]["recall@5"] == 1.0 and r["new_products"]["5"]["draws"] == 3
    assert r["all_products"]["all"]["recall@1"] == pytest.approx(5 / 6) and r["all_products"]["all"]["draws"] == 1
    assert r["unknown_retrieval"]["auroc"] == pytest.approx(1.0)  # new products are far from the known ones
    other = r["unknown_scores_auroc"]
    assert other["gallery_similarity"] == pytest.approx(r["unknown_retrieval"]["auroc"])  # the same rule twice
    assert other["nearest_photo"] == pytest.approx(1.0) and other["softmax"] == pytest.approx(
        r["unknown_classifier"]["auroc"])
    assert all(0 <= v <= 1 for v in other.values()) and len(other) == 11
    assert _describe({"dim": 64, "source": "pooled"}) == "64-d pooled"
    assert _describe({"dim": 64, "source": "pooled", "colour": {"weight": 1.0}}) == "64-d pooled + colour x1"


def test_mahalanobis_unknown_score_discounts_the_directions_products_vary_in():
    """Known products vary a lot along one direction (light, say) and little along another; a new
    product differs from a known one a little along the second. By cosine the new product's photos
    are nearer their neighbour than the known products' own test photos taken in other light, so the
    gallery's similarity ranks them backwards; the Mahalanobis score, which measures distance in
    units of the within-product spread, ranks them right."""
    from skulens.bench._unknown_scores import unknown_score_aurocs

    rng = np.random.default_rng(0)
    dim, known = 8, np.arange(3)
    centres = np.zeros((3, dim))
    centres[np.arange(3), np.arange(3) + 2] = 1.0                     # products along dims 2..4

    def photos(c, n, light, shift=0.0):                              # light: dim 0; shift: dim 1
        v = np.repeat(centres[c][None], n, 0) + 0.01 * rng.standard_normal((n, dim))
        v[:, 0] += light * rng.standard_normal(n)
        v[:, 1] += shift
        return v.astype(np.float32)

    train = np.concatenate([photos(c, 40, 0.4) for c in known])
    train_y = np.repeat(known, 40)
    test = np.concatenate([photos(c, 20, 0.6) for c in known] + [photos(0, 20, 0.0, shift=0.15)])
    test_y = np.r_[np.repeat(known, 20), np.full(20, 3)]                # class 3: the new product
    logits = np.zeros((len(test), 3), np.float32)
    a = unknown_score_aurocs(train, train_y, test, test_y, logits, known, pca_dim=dim, shrinkage=1e-3)
    assert a["gallery_similarity"] < 0.5 < 0.95 < a["mahalanobis"], a
    assert a["softmax"] == pytest.approx(0.5)  # constant logits cannot tell


def test_retrieval_class_split():
    """--new-classes: 'first' is the first half of the ids, 'random:S' a seeded half; both are
    disjoint from the known half and cover every class; anything else is refused."""
    from skulens.bench.retrieval import class_split

    new, known = class_split("first", 81)
    assert new.tolist() == list(range(40)) and known.tolist() == list(range(40, 81))
    r0, k0 = class_split("random:0", 81)
    assert len(r0) == 40 and not set(r0) & set(k0) and sorted([*r0, *k0]) == list(range(81))
    assert class_split("random:0", 81)[0].tolist() == r0.tolist()            # the seed fixes the draw
    assert class_split("random:1", 81)[0].tolist() != r0.tolist()
    assert r0.tolist() != list(range(40))
    for bad in ("random", "random:x", "last", ""):
        with pytest.raises(ValueError, match="first' or 'random:SEED"):
            class_split(bad, 81)


def test_retrieval_bench_refuses_a_model_of_another_split(tiny_run, grocery_subset, tmp_path, capsys):
    """The bench measures a model trained on the known half only: a checkpoint that knows every
    class (or another split's half) is refused before anything is written or exported."""
    from skulens.bench.retrieval import main

    out = tmp_path / "ret"
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(grocery_subset), "--out", str(out), "--checkpoint", str(tiny_run[0] / "best.pt")])
    assert exc.value.code == 2
    assert "was not trained on the known classes of --new-classes first" in capsys.readouterr().err
    assert not out.exists()
