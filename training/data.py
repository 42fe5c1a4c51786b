"""Datasets for training: cached decoded images, augmentation, then the preprocessing contract.

The eval transform is exactly ``PreprocessConfig.apply`` on the decoded image (what the SDK
does); the train transform is ``augment`` followed by the same ``apply``.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from skulens import PreprocessConfig, decode_image
from skulens.internal import Sample

from .augment import AugmentConfig, augment

log = logging.getLogger(__name__)


def _shrink(image: np.ndarray, short_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    s = short_side / min(h, w)
    if s >= 1:
        return image
    out = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return out.reshape(out.shape[0], out.shape[1], -1) if image.ndim == 3 else out


def load_images(samples: list[Sample], short_side: int | None = None, progress=None) -> list[np.ndarray]:
    """Decode every sample (and shrink its shorter side to ``short_side`` to save memory/time)."""
    out = []
    for s in samples:
        img = decode_image(s.path)
        if img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        out.append(_shrink(img, short_side) if short_side else img)
        if progress:
            progress(1)
    return out


def eval_tensors(samples: list[Sample], cfg: PreprocessConfig, progress=None) -> torch.Tensor:
    """The SDK's exact input for each sample: decode_image -> PreprocessConfig.apply."""
    xs = []
    for s in samples:
        xs.append(cfg.apply(decode_image(s.path)))
        if progress:
            progress(1)
    return torch.from_numpy(np.stack(xs))


class TrainSet(TorchDataset):
    """Augmented training samples. Augmentation randomness is a pure function of
    (seed, epoch, index), so results do not depend on the number of loader workers.

    ``aug_size``: side of the augmented crop before the contract's resize (default: the
    contract's input size). ``views``: with K views, epoch e repeats the augmentation of epoch
    e % K (distillation caches the teacher's logits for those K views)."""

    def __init__(self, images: list[np.ndarray], labels: list[int], cfg: PreprocessConfig,
                 augment_cfg: AugmentConfig, seed: int = 0, extra=None, aug_size: int | None = None,
                 views: int | None = None):
        self.images, self.labels = images, labels
        self.cfg, self.augment_cfg, self.seed = cfg, augment_cfg, seed
        self.aug_size = (aug_size, aug_size) if aug_size else cfg.input_size
        self.views = views
        self.epoch = 0
        self.extra = extra  # optional sized callable(index, rng) -> (image, label): synthetic samples

    def __len__(self):
        return len(self.images) + (len(self.extra) if self.extra is not None else 0)

    def view(self) -> int:
        return self.epoch % self.views if self.views else self.epoch

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, self.view(), i])
        n = len(self.images)
        image, label = self.extra(i - n, rng) if i >= n else (self.images[i], self.labels[i])
        img = augment(image, self.aug_size, self.augment_cfg, rng)
        return torch.from_numpy(self.cfg.apply(img)), label
