"""Image-quality measures for generators in a fixed feature space.

No Inception weights can be downloaded, so FID and KID here use the pooled 1280-d features of the
ImageNet EfficientNet-Lite0 (:class:`ImageNetFeatures`: the same weights for every run, so
numbers stay comparable across retrains), or, on request, a trained skulens classifier's
penultimate-layer features (:class:`FeatureExtractor`; that space moves with every retrain).
Every image, real or generated, goes through the same path in float64.
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


class ImageNetFeatures:
    """Pooled features of the ImageNet EfficientNet-Lite0 (needs the pretrained extra) on uint8
    OpenCV images: centre crop + area resize to ``image_size`` (the generator's resolution, so
    real photos lose the same detail generated images never had), then bilinear resize to
    ``input_size``, RGB ``(p - 127) / 128``, the network up to its global average pool."""

    def __init__(self, image_size: int, input_size: int = 224):
        from ..efficientnet import EfficientNetLite
        from ..pretrained import load_pretrained
        from .data import crop_contract

        self.model = EfficientNetLite(num_classes=1, variant="lite0", drop_path=0.0)
        self.weights = load_pretrained(self.model, "efficientnet_lite0")
        self.model.eval()
        self.image_size, self.input_size = image_size, input_size
        self.contract = crop_contract(image_size, 3)
        self.description = (f"ImageNet EfficientNet-Lite0 pooled features (1280-d, weights sha256 "
                             f"{self.weights['sha256'][:16]}...): centre crop + area resize to {image_size} px, "
                             f"bilinear to {input_size} px, RGB (p - 127) / 128")

    @torch.no_grad()
    def __call__(self, images, batch_size: int = 64) -> np.ndarray:
        """images (uint8 OpenCV arrays, BGR or gray) -> features [N, 1280] float64."""
        images, out = list(images), []
        for i in range(0, len(images), batch_size):
            rgb = np.stack([self.contract.to_model_colors(self.contract.resize_and_crop(im))
                            for im in images[i:i + batch_size]])         # [b, S, S, 3] uint8 RGB
            x = (torch.from_numpy(rgb).permute(0, 3, 1, 2).float() - 127.0) / 128.0
            x = torch.nn.functional.interpolate(x, size=(self.input_size,) * 2, mode="bilinear",
                                                align_corners=False)
            out.append(self.model.features(x).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1280))


def kernel_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 50, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3,
    averaged over ``subsets`` random subsets of ``min(subset_size, n1, n2)`` per side; returns
    (mean, std over subsets). Unbiased, so small sets do not inflate it (unlike FID)."""
    d, m = f1.shape[1], min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = m * (m - 1)
        vals.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


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


def within_class_spread(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean pairwise cosine distance between features of the same class, averaged over the classes
    with at least 2 samples: 0 = every image of a class alike (mode collapse); real photos of a
    class set the level to compare with (use the same per-class counts on both sides)."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    spreads = []
    for c in np.unique(labels):
        x = f[labels == c]
        n = len(x)
        if n >= 2:
            gram = x @ x.T
            spreads.append(1.0 - (gram.sum() - np.trace(gram)) / (n * (n - 1)))
    if not spreads:
        raise ValueError("within-class spread needs a class with at least 2 samples")
    return float(np.mean(spreads))


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
