"""Other "unknown product" scores than the gallery's similarity, for ``skulens.bench.retrieval``.

Each is a score that is higher for a photo of a known product; its AUROC (known queries vs the
new products' queries) is reported beside the two rules the product uses, so that every figure
in the README's list of scores tried comes from a repo command:

- ``gallery_similarity``: cosine to the nearest product's mean embedding (the gallery's rule);
- ``nearest_photo`` / ``3rd_nearest_photo`` / ``10th_nearest_photo``: cosine to the k-th nearest
  enrolled photo of any known product (deep k-NN, Sun et al. 2022);
- ``margin``: gallery similarity of the best product minus that of the second;
- ``softmax``, ``max_logit``, ``energy`` (log-sum-exp of the logits): the classifier's outputs;
- ``similarity_x_softmax``: the product of the gallery similarity and the softmax;
- ``mahalanobis``: minus the smallest Mahalanobis distance to a known product's mean (shared
  within-product covariance of the known photos' embeddings, after PCA to ``pca_dim``, shrunk by
  ``shrinkage`` x its mean eigenvalue; Lee et al. 2018); ``relative_mahalanobis``: the same minus
  the distance to one Gaussian of all known photos (Ren et al. 2021, a near-OOD rule).
"""
from __future__ import annotations

import numpy as np

from skulens.internal import auroc, softmax


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _mahalanobis_sq(x: np.ndarray, centres: np.ndarray, cov: np.ndarray, shrinkage: float) -> np.ndarray:
    """[N, C] squared Mahalanobis distances of x [N, D] to centres [C, D] under cov [D, D] (shrunk)."""
    inv = np.linalg.inv(cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov)))
    diff = x[:, None, :] - centres[None, :, :]                                   # [N, C, D]
    return np.einsum("ncd,de,nce->nc", diff, inv, diff)


def unknown_scores(train_emb, train_y, test_emb, test_logits, known, pca_dim: int = 128,
                   shrinkage: float = 0.1) -> dict[str, np.ndarray]:
    """{score name: [N] scores of the queries ``test_emb``} from the known products' enrolled
    photos (``train_emb`` rows whose ``train_y`` is in ``known``) and the classifier's logits."""
    m = np.isin(train_y, known)
    x, y, q = _l2(train_emb[m].astype(np.float64)), train_y[m], _l2(test_emb.astype(np.float64))
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])                       # [C, D]
    by_product = np.sort(q @ _l2(means).T, axis=1)                               # [N, C], ascending
    by_photo = np.sort(q @ x.T, axis=1)                                          # [N, n_known_photos]
    logits = test_logits.astype(np.float64)
    top = logits.max(1)
    p = softmax(test_logits.astype(np.float32)).max(1).astype(np.float64)
    s = {"gallery_similarity": by_product[:, -1], "nearest_photo": by_photo[:, -1],
         "3rd_nearest_photo": by_photo[:, -min(3, by_photo.shape[1])],
         "10th_nearest_photo": by_photo[:, -min(10, by_photo.shape[1])],
         "margin": by_product[:, -1] - by_product[:, -2] if len(classes) > 1 else by_product[:, -1],
         "softmax": p, "max_logit": top, "energy": top + np.log(np.exp(logits - top[:, None]).sum(1)),
         "similarity_x_softmax": by_product[:, -1] * p}
    # Mahalanobis in a PCA basis of the known photos (the covariance of 1280-d features from a few
    # thousand photos is ill-conditioned)
    centre = x.mean(0)
    _, _, vt = np.linalg.svd(x - centre, full_matrices=False)
    basis = vt[:min(pca_dim, len(vt))].T                                         # [D, P]
    xp, qp, mp = (x - centre) @ basis, (q - centre) @ basis, (means - centre) @ basis
    within = sum((xp[y == c] - mp[i]).T @ (xp[y == c] - mp[i]) for i, c in enumerate(classes)) / len(xp)
    d_class = _mahalanobis_sq(qp, mp, within, shrinkage).min(1)
    d_all = _mahalanobis_sq(qp, xp.mean(0, keepdims=True), np.cov(xp.T, bias=True), shrinkage)[:, 0]
    s["mahalanobis"] = -d_class
    s["relative_mahalanobis"] = -(d_class - d_all)
    return s


def unknown_score_aurocs(train_emb, train_y, test_emb, test_y, test_logits, known, **kw) -> dict[str, float]:
    """{score name: AUROC of known-product queries vs new-product queries} (see the module docstring)."""
    is_known = np.isin(test_y, known)
    return {name: auroc(v[is_known], v[~is_known])
            for name, v in unknown_scores(train_emb, train_y, test_emb, test_logits, known, **kw).items()}
