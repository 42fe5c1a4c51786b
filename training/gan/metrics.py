"""Image-quality measures for generators, in the feature space of the project's own classifier.

No Inception weights can be downloaded, so "FID" here is the Fréchet distance between Gaussian
fits of a trained skulens classifier's penultimate-layer features (``model.features(x)``: the
global-average-pooled activations before dropout and the linear head). Both image sets go
through exactly the same path: uint8 OpenCV image -> the classifier's preprocessing contract
(``PreprocessConfig.apply``) -> ``features`` in float64.
"""
from __future__ import annotations

import numpy as np
import torch

from ..checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of


class FeatureExtractor:
    """Penultimate-layer features (and logits) of a classifier checkpoint on uint8 OpenCV images."""

    def __init__(self, checkpoint):
        ckpt = load_checkpoint(checkpoint)
        self.path = str(checkpoint)
        self.model = model_from_checkpoint(ckpt)
        self.preprocess = preprocess_of(ckpt)
        self.labels = list(ckpt["labels"])
        if not hasattr(self.model, "features"):
            raise ValueError(f"{checkpoint}: model {ckpt['model_name']} has no features() method")

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """images (uint8 OpenCV arrays) -> (features [N, F] float64, logits [N, K] float32)."""
        feats, logits = [], []
        images = list(images)
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(self.preprocess.apply_batch(images[i:i + batch_size]))
            f = self.model.features(x)
            feats.append(f.double().numpy())
            logits.append(self.model.head(f).numpy())
        return np.concatenate(feats), np.concatenate(logits)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) between Gaussian fits of two feature sets.

    Tr((S1 S2)^1/2) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S1^1/2 S2 S1^1/2 (same spectrum as S1 S2), which is exact and numerically stable.
    Covariances use the unbiased (N - 1) estimator."""
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples per set")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    r1 = _sqrtm_psd(s1)
    cross = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = float(np.sqrt(np.clip(cross, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB over all pixels of two uint8 image stacks (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse))


def relative_feature_distance(fa: np.ndarray, fb: np.ndarray) -> float:
    """Mean paired distance ||fa_i - fb_i|| divided by the mean distance between *different*
    samples of ``fb``: 0 = identical features, 1 = as far apart as two unrelated images."""
    paired = np.linalg.norm(fa - fb, axis=1).mean()
    d = np.linalg.norm(fb[:, None, :] - fb[None, :, :], axis=2)
    n = len(fb)
    spread = d.sum() / max(1, n * (n - 1))
    return float(paired / spread) if spread > 0 else float(paired > 0)
