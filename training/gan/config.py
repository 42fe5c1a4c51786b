"""GAN training options (torch-free, so the CLI builds its flags without importing torch)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from skulens import SkulensError

DIFFAUG_POLICIES = ("color", "translation", "cutout")


class GanConfigError(SkulensError, ValueError):
    """An invalid GAN option (the message lists every problem)."""


@dataclass
class GanConfig:
    """Options of :func:`skulens.training.gan.train_gan`; each field is a ``skulens gan train`` flag.

    data: a dataset folder (class folders or split lists, see ``skulens.load_dataset``) or an
        ``.npz`` with arrays ``x`` [N, H, W(, C)] uint8 and ``y`` [N] (and optional ``labels``).
    classes: comma-separated class names or ids to train on (default: all classes).
    image_size / channels: output resolution (a multiple of 4, >= 8) and 3 (RGB) or 1 (gray).
    g_width: generator channels at the lowest resolution (halved at every upsampling).
    d_width: discriminator channels at full resolution (doubled at every downsampling).
    steps_per_epoch: optimiser steps per epoch (0 = one pass over the real images).
    diffaug: comma-separated DiffAugment policies applied to real and fake ("" = none).
    grid_classes: comma-separated classes for the per-epoch sample grid (default: the first 10).
    """

    data: str
    out: str = "runs/gan"
    classes: str | None = None
    image_size: int = 64
    channels: int = 3
    z_dim: int = 128
    embed_dim: int = 64
    g_width: int = 256
    d_width: int = 64
    epochs: int = 100
    steps_per_epoch: int = 0
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 4e-4                # two time-scale updates (D learns faster; n_dis = 1)
    beta1: float = 0.0
    beta2: float = 0.999
    ema_decay: float = 0.999
    mode_seeking: float = 1.0         # MSGAN weight against intra-class mode collapse (0 = off)
    diffaug: str = "color,translation,cutout"
    hflip: bool = True
    seed: int = 0
    threads: int = 0
    resume: bool = False
    grid_classes: str | None = None
    grid_per_class: int = 8
    classifier: str | None = None     # a classifier checkpoint of the same classes (export gate, eval)

    def __post_init__(self):
        problems = []
        if self.image_size < 8 or self.image_size % 4:
            problems.append(f"image_size must be a multiple of 4 and >= 8, got {self.image_size}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 (gray) or 3 (RGB), got {self.channels}")
        for name in ("z_dim", "embed_dim", "g_width", "d_width", "epochs", "batch_size", "grid_per_class"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch < 0:
            problems.append(f"steps_per_epoch must be >= 0, got {self.steps_per_epoch}")
        if self.mode_seeking < 0:
            problems.append(f"mode_seeking must be >= 0, got {self.mode_seeking}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        unknown = [p for p in self.policies if p not in DIFFAUG_POLICIES]
        if unknown:
            problems.append(f"unknown diffaug policies {unknown} (choose from {DIFFAUG_POLICIES})")
        if problems:
            raise GanConfigError("invalid GanConfig: " + "; ".join(problems))

    @property
    def policies(self) -> list[str]:
        return [p.strip() for p in (self.diffaug or "").split(",") if p.strip()]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class GanEvalConfig:
    """Options of :func:`skulens.training.gan.evaluate_gan` (``skulens gan eval`` flags).

    generator: the fp32 generator .onnx; data: the dataset it was trained on (its train and test
    splits are the real sets); classifier: a classifier checkpoint trained on ``data`` (feature
    space for FID, and the recipe reused for CAS and the low-data arms).
    int8: the INT8 generator to time (default: <generator>.int8.onnx or .int8.rejected.onnx).
    lowdata_data / lowdata_generator: the low-data subset and a generator trained ONLY on it;
    lowdata_epochs: epochs of the real-only arm; equal_steps: give the +GAN arm the same number
    of optimiser steps (fewer epochs) instead of the same number of epochs.
    fid / cas / latency: which measurements to run (``--no-fid --no-cas`` for latency only).
    """

    generator: str
    data: str
    classifier: str
    out: str = "runs/gan_eval"
    int8: str | None = None
    lowdata_data: str | None = None
    lowdata_generator: str | None = None
    seeds: int = 3
    lowdata_epochs: int = 60
    gan_ratio: float = 1.0
    equal_steps: bool = True
    fid: bool = True
    cas: bool = True
    latency: bool = True
    threads: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.seeds < 1 or self.lowdata_epochs < 1 or self.gan_ratio <= 0 or self.threads < 0:
            raise GanConfigError("seeds and lowdata_epochs must be >= 1, gan_ratio > 0, threads >= 0")
        if bool(self.lowdata_data) != bool(self.lowdata_generator):
            raise GanConfigError("give both --lowdata-data and --lowdata-generator (a generator "
                                 "trained only on that low-data subset), or neither")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
