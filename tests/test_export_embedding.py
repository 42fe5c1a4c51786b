"""The embedding's learnt maps (export._embedding): the PCA projection and the within-product
whitening (WCCN), fitted at export on the training photos, carried through ONNX and INT8 and
declared in the metadata."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from skulens import ImageClassifier, ModelError, load_dataset
from skulens.export import ExportConfig
from skulens.export._embedding import fit_wccn


class _Identity(nn.Module):
    """features(x) = x: the fit sees the given vectors as the model's pooled features."""

    def features(self, x):
        return x


def _within_cov(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    c = np.concatenate([z[y == k] - z[y == k].mean(0) for k in np.unique(y)])
    return c.T @ c / len(c)


def test_wccn_whitens_the_within_class_covariance():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 50)
    centres = rng.normal(size=(6, 8)) * 3
    spread = np.diag([4.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05])  # photos of a product differ mostly along axis 0
    x = centres[y] + rng.normal(size=(len(y), 8)) @ spread
    mean, w, classes = fit_wccn(_Identity(), torch.tensor(x), y, shrinkage=0.0)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    z = (unit - mean.numpy()) @ w.numpy()
    assert classes == 6
    np.testing.assert_allclose(_within_cov(z, y), np.eye(8), atol=1e-3)
    # shrinkage leaves the large within-product directions damped but keeps the small ones from blowing up
    _, w_shrunk, _ = fit_wccn(_Identity(), torch.tensor(x), y, shrinkage=1.0)
    assert np.linalg.norm(w_shrunk.numpy(), 2) < np.linalg.norm(w.numpy(), 2)
    with pytest.raises(ModelError, match="two classes"):
        fit_wccn(_Identity(), torch.tensor(x[:50]), y[:50], shrinkage=0.3)  # one class only


def test_options_are_checked_before_the_checkpoint_is_read():
    with pytest.raises(ValueError, match="do not combine"):
        ExportConfig(checkpoint="x.pt", out="y.onnx", embedding_dim=8, embedding_whiten=0.3)
    with pytest.raises(ValueError, match="embedding_whiten"):
        ExportConfig(checkpoint="x.pt", out="y.onnx", embedding_whiten=-1)
    with pytest.raises(ValueError, match="--no-embedding leaves out"):
        ExportConfig(checkpoint="x.pt", out="y.onnx", embedding=False, embedding_whiten=1)


def _ratio(emb: np.ndarray, y: np.ndarray) -> float:
    """Mean within-class cosine distance over mean between-class cosine distance (lower: tighter products)."""
    d = 1 - emb @ emb.T
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return float(d[same & off].mean() / d[~same].mean())


@pytest.mark.parametrize("kind", ["pca", "wccn"])
def test_learnt_embeddings_export_through_int8(kind, tiny_run, tiny_models, grocery_subset, tmp_path):
    from skulens.export import export_classifier

    extra = {"embedding_dim": 8} if kind == "pca" else {"embedding_whiten": 0.3}
    report = export_classifier(ExportConfig(checkpoint=str(tiny_run[0] / "best.pt"), out=str(tmp_path / "m.onnx"),
                                            int8=True, data=str(grocery_subset), calibration_size=32,
                                            activation_type="u8", eval_limit=16, **extra))
    spec = report["embedding"]
    assert spec["source"] == kind and report["parity_max_abs_embedding_diff"] < 1e-4
    assert spec["dim"] == (8 if kind == "pca" else spec["features"])
    ds = load_dataset(grocery_subset)
    train = ds.split("train")
    y = np.array([s.label for s in train])
    with ImageClassifier.from_path(report["fp32"]["path"]) as a, ImageClassifier.from_path(report["int8"]["path"]) as b, \
            ImageClassifier.from_path(tiny_models[0]) as pooled:
        assert a.embedding_spec == b.embedding_spec == spec
        ea, eb = a.embed_batch([s.path for s in train]), b.embed_batch([s.path for s in train])
        ep = pooled.embed_batch([s.path for s in train])
    np.testing.assert_allclose(np.linalg.norm(ea, axis=1), 1, atol=1e-5)
    assert np.median(np.sum(ea * eb, axis=1)) > 0.9  # INT8 keeps the direction
    if kind == "wccn":  # fitted to pull the photos of one product together, relative to other products
        assert spec["wccn_images"] == len(train) and spec["wccn_classes"] == len(np.unique(y))
        assert _ratio(ea, y) < _ratio(ep, y)
