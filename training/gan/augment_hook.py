"""``skulens train --gan-augment GEN.onnx``: mix generated images into classifier training.

:class:`GanAugment` is the ``extra`` hook of :class:`skulens.training.data.TrainSet`: a sized callable
``(index, rng) -> (BGR uint8 image, label)``. For each training class that the generator
knows (matched by label name), ``round(ratio * n_real)`` synthetic slots are added per epoch;
each slot draws one image from a pre-generated pool (``pool_factor`` x larger, fixed seeds) with
the sample's own rng, so epochs see different synthetic images and results do not depend on
the number of loader workers. The classical augmentation is applied to them as to real images.

With ``--gan-augment-mode add`` the slots do not join the epoch's dataset: :class:`SyntheticBatches`
draws a synthetic batch for every real batch, so the run keeps the optimiser steps and the real
batches of a run without the generator, and the synthetic images' loss is added to the real one.
With ``--gan-augment-bn separate`` that batch goes through the network on its own, inside
:func:`own_batch_statistics`: normalised by its own statistics, it leaves BatchNorm's running
statistics (what the model normalises with at test) to the real images alone.
"""
from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from skulens import GeneratorOptions, ImageGenerator

from ..data import TrainSet

log = logging.getLogger(__name__)


class GanAugment:
    def __init__(self, model_path, classes, real_labels, ratio: float = 1.0, seed: int = 0,
                 pool_factor: int = 4, latent_scale: float = 1.0):
        if ratio <= 0:
            raise ValueError(f"gan_augment_ratio must be > 0, got {ratio}")
        if not 0 < latent_scale <= 10 or pool_factor < 1:
            raise ValueError(f"gan_augment_latent_scale must be in (0, 10] and gan_augment_pool >= 1, got "
                             f"{latent_scale} and {pool_factor}")
        counts = Counter(int(v) for v in real_labels)
        self.pools: dict[int, np.ndarray] = {}
        slots = []
        with ImageGenerator.from_path(model_path, GeneratorOptions(num_threads=1, latent_scale=latent_scale)) as gen:
            known = set(gen.labels)
            missing = [c for c in classes if c not in known]
            if len(missing) == len(classes):
                raise ValueError(f"{model_path}: the generator knows none of the training classes "
                                 f"(it has {list(gen.labels)[:5]}...)")
            if missing:
                log.warning("gan-augment: the generator does not know %d classes (e.g. %s); they get "
                            "no synthetic images", len(missing), missing[:5])
            for c, name in enumerate(classes):
                n = round(ratio * counts.get(c, 0))
                if name not in known or n == 0:
                    continue
                self.pools[c] = gen.generate(name, n=n * pool_factor, seed=seed * 100_003 + c)
                slots += [c] * n
        self.slot_labels = np.array(slots, dtype=np.int64)
        self.source = str(model_path)
        log.info("gan-augment: %d synthetic images per epoch from %s (ratio %.2f, pools of %dx)",
                 len(self), model_path, ratio, pool_factor)

    def __len__(self) -> int:
        return len(self.slot_labels)

    def __call__(self, index: int, rng) -> tuple[np.ndarray, int]:
        label = int(self.slot_labels[index])
        pool = self.pools[label]
        return pool[int(rng.integers(len(pool)))], label


class SyntheticBatches:
    """Batches of a :class:`GanAugment` hook's images, augmented as real ones, for ``add`` mode.

    Each epoch draws ``batches x batch_size`` slots (whole permutations of the slots, then part of
    one); the draws and the augmentation are a pure function of (seed, epoch), so a resumed run
    continues exactly."""

    def __init__(self, hook: GanAugment, preprocess, augment_cfg, seed: int = 0, epochs: int = 0):
        self.set = TrainSet([], [], preprocess, augment_cfg, seed=seed + 1, extra=hook)
        self.seed, self.epochs = seed, epochs  # epochs: with synthetic batches, from the first (0 = all)
        log.info("gan-augment add mode: a batch of synthetic images beside each real batch, drawn from %d slots",
                 len(hook))

    def epoch(self, epoch: int, batches: int, batch_size: int, num_workers: int = 0):
        """An iterator of ``batches`` pairs (x [S, C, H, W] float32, y [S] int64), S = ``batch_size``;
        None for an epoch past ``epochs`` (it trains on the real photos alone)."""
        if self.epochs and epoch >= self.epochs:
            return None
        if batch_size < 1 or not len(self.set):
            raise ValueError(f"add mode needs synthetic images and a synthetic batch of >= 1 (got {batch_size}); "
                             "raise --gan-augment-ratio")
        self.set.epoch = epoch
        draws = RandomSampler(self.set, replacement=False, num_samples=batches * batch_size,
                              generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return iter(DataLoader(self.set, batch_size=batch_size, sampler=draws, num_workers=num_workers))


@contextmanager
def own_batch_statistics(model: torch.nn.Module):
    """Forward passes inside normalise each batch by its own statistics (as in training) without
    updating any BatchNorm's running statistics: the generated images' statistics stay out of what
    the model normalises real photos with at test. Modules in eval mode (a frozen backbone) are unchanged."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.training and m.track_running_stats]
    try:
        for m in norms:  # training mode without tracking: batch statistics, running buffers untouched
            m.track_running_stats = False
        yield model
    finally:
        for m in norms:
            m.track_running_stats = True
