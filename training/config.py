"""Training configuration (torch-free, so the CLI can build its flags without importing torch)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from sdk import PreprocessConfig

from .augment import AugmentConfig

MEAN_STD = {"RGB": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            "BGR": ((0.406, 0.456, 0.485), (0.225, 0.224, 0.229)),
            "GRAY": ((0.5,), (0.25,))}


@dataclass
class TrainConfig:
    data: str
    out: str = "runs/train"
    model: str = "edge_resnet_patch"
    input_size: int = 128
    color_order: str = "RGB"
    epochs: int = 60
    batch_size: int = 64
    optimizer: str = "sgd"            # "sgd" (Nesterov) or "adamw"
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    ema_decay: float = 0.998          # per-step EMA of the weights (0 = off); the EMA is what is kept
    select: Literal["last", "val"] = "last"  # best.pt holds the last epoch, or the best val top-1 one
    mix_prob: float = 0.0             # probability per batch of CutMix (or MixUp, half the time)
    seed: int = 0
    num_workers: int = 1              # augmentation processes beside the training process
    threads: int = 0                  # torch intra-op threads (0 = torch default)
    init_from: str | None = None      # start from another checkpoint's weights (new head)
    freeze_backbone: int = 0          # epochs training only the head first
    resume: bool = False
    cache_size: int | None = None     # shorter side of cached train images (default 2 x input)
    gan_augment: str | None = None    # generator .onnx: mix its images into training (off by default)
    gan_augment_ratio: float = 1.0    # synthetic images per real image of each class, per epoch
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model_kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["augment"] = dataclasses.asdict(self.augment)
        return d


def make_preprocess(cfg: TrainConfig) -> PreprocessConfig:
    mean, std = MEAN_STD[cfg.color_order]
    return PreprocessConfig(input_size=(cfg.input_size, cfg.input_size), color_order=cfg.color_order,
                            resize="shorter_side_crop", crop_fraction=1.0, interpolation="area",
                            mean=mean, std=std, layout="NCHW")
