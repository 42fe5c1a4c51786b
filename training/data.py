"""Datasets for training: cached decoded images, augmentation, then the preprocessing contract.

The eval transform is exactly what the SDK does: ``decode_image`` for the contract (a JPEG at
the reduced scale its ``reduced_decode`` allows, EXIF orientation applied) then
``PreprocessConfig.apply``; the train transform is ``augment`` followed by the same ``apply``.
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import WeightedRandomSampler

from skulens import PreprocessConfig, decode_image
from skulens.internal import Dataset, Sample, duplicates_across_splits, holdout

from .augment import AugmentConfig, augment

log = logging.getLogger(__name__)


def _shrink(image: np.ndarray, short_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    s = short_side / min(h, w)
    if s >= 1:
        return image
    out = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return out.reshape(out.shape[0], out.shape[1], -1) if image.ndim == 3 else out


def load_images(samples: list[Sample], short_side: int | None = None, progress=None,
                preprocess: PreprocessConfig | None = None) -> list[np.ndarray]:
    """Decode every sample (and shrink its shorter side to ``short_side`` to save memory/time).

    ``preprocess``: decode JPEGs as the SDK does for that contract (at the reduced scale its
    ``reduced_decode`` allows), so training sees the pixels the deployed model will; None
    decodes in full. The cache then holds at most what the SDK decodes: with ratio r, a
    shorter side of at least r x the contract's resize (2 x input for r = 2, the default cache)."""
    out = []
    for s in samples:
        img = decode_image(s.path, preprocess=preprocess)
        if img.ndim == 3 and img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        out.append(_shrink(img, short_side) if short_side else img)
        if progress:
            progress(1)
    return out


def eval_tensors(samples: list[Sample], cfg: PreprocessConfig, progress=None) -> torch.Tensor:
    """The SDK's exact input for each sample: decode_image for ``cfg`` -> PreprocessConfig.apply."""
    xs = []
    for s in samples:
        xs.append(cfg.apply(decode_image(s.path, preprocess=cfg)))
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


# -- the split and sampling hook: which photos train, which validate, and how they are drawn ---

TINY_CLASS = 10       # a class with fewer training photos than this gets a warning
IMBALANCE_RATIO = 4   # largest / smallest class beyond which --balance is suggested


def training_split(dataset: Dataset) -> tuple[list[Sample], list[Sample]]:
    """(train, val): the dataset's own val split, or where it has none a stratified hold-out of
    train (a tenth of each class that has 3 photos or more, chosen by file-name hash)."""
    train = dataset.split("train")
    if dataset.splits.get("val"):
        return train, dataset.splits["val"]
    return holdout(train)


def check_training_data(dataset: Dataset, train: list[Sample], val: list[Sample], balance: bool) -> list[str]:
    """What is worth a warning before training on ``train``/``val``: classes without or with
    few training photos, an imbalanced class distribution, and byte-identical photos in more
    than one split (a leak that inflates val and test figures)."""
    warnings = []
    counts = np.bincount([s.label for s in train], minlength=len(dataset.classes))
    empty = [dataset.classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        warnings.append(f"{len(empty)} class(es) have no training photos and can never be predicted: "
                        f"{', '.join(empty[:8])}{', ...' if len(empty) > 8 else ''}")
    tiny = [i for i in np.argsort(counts, kind="stable") if 0 < counts[i] < TINY_CLASS]
    if tiny:
        listed = ", ".join(f"{dataset.classes[i]} ({counts[i]})" for i in tiny[:8])
        warnings.append(f"{len(tiny)} class(es) have fewer than {TINY_CLASS} training photos: {listed}"
                        f"{', ...' if len(tiny) > 8 else ''}; expect weak accuracy on them (20-30 photos per "
                        "class, in the lighting and angles of use, make a good start)")
    present = counts[counts > 0]
    if len(present) > 1 and present.max() > IMBALANCE_RATIO * present.min() and not balance:
        big, small = int(np.argmax(counts)), int(np.argmin(np.where(counts > 0, counts, counts.max() + 1)))
        warnings.append(f"imbalanced classes: {dataset.classes[big]} has {counts[big]} training photos, "
                        f"{dataset.classes[small]} {counts[small]}; the model will favour the large classes "
                        "(--balance draws every class equally often)")
    if not val:
        warnings.append("no validation photos: val figures, --select val and --patience are unavailable")
    splits = {"train": train, "val": val, "test": dataset.splits.get("test") or []}
    groups = duplicates_across_splits(Dataset(dataset.root, dataset.classes, splits))
    if groups:
        example = " = ".join(f"{split}:{path}" for split, path in groups[0][:2])
        warnings.append(f"{len(groups)} photo(s) appear, byte for byte, in more than one split (e.g. {example}); "
                        "val/test figures are then optimistic: remove the copies")
    return warnings


def balanced_sampler(labels: list[int], num_samples: int, generator: torch.Generator) -> WeightedRandomSampler:
    """Draws ``num_samples`` indices per epoch (with replacement), each class equally likely."""
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[np.asarray(labels)], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)
