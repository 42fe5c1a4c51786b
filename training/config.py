"""Training configuration (torch-free, so the CLI can build its flags without importing torch).

Fields left at ``None`` come from the run's *recipe* (:func:`resolve`): "finetune" for a model
that starts from ImageNet weights, "scratch" otherwise. By default a pretrained
EfficientNet-Lite0 is fine-tuned when the ``pretrained`` extra is installed, else the
from-scratch edge model is trained.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from skulens import PreprocessConfig

from .augment import AugmentConfig
from .pretrained import pretrained_installed

MEAN_STD = {"RGB": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            "BGR": ((0.406, 0.456, 0.485), (0.225, 0.224, 0.229)),
            "GRAY": ((0.5,), (0.25,))}


# Per recipe, the value of every TrainConfig field left at None.
RECIPES = {
    # edge_resnet_patch from scratch: 60 epochs of SGD at 128 px (README: 64.5 % Grocery test top-1)
    "scratch": dict(input_size=128, train_size=None, epochs=60, batch_size=64, optimizer="sgd", lr=0.1,
                    weight_decay=5e-4, warmup_epochs=2.0, ema_decay=0.998, layer_decay=1.0,
                    head_lr_mult=1.0, precision="fp32"),
    # ImageNet weights, all layers fine-tuned: a short schedule at a low learning rate that decays
    # towards the input (the early layers' ImageNet filters are kept nearly as they are), a 5x
    # rate for the new classifier, bfloat16 autocast; trained at 192 px and evaluated at 224 px
    # (random-resized crops make objects look larger in training than in the centre crop at
    # test, and a larger test size compensates: "FixRes", Touvron et al. 2019)
    "finetune": dict(input_size=224, train_size=192, epochs=12, batch_size=32, optimizer="sgd", lr=0.02,
                     weight_decay=5e-5, warmup_epochs=1.0, ema_decay=0.995, layer_decay=0.9,
                     head_lr_mult=5.0, precision="auto"),
}
DEFAULT_PRETRAINED_MODEL = "efficientnet_lite0"
DEFAULT_SCRATCH_MODEL = "edge_resnet_patch"

@dataclass
class TrainConfig:
    data: str
    out: str = "runs/train"
    model: str | None = None          # registry name (default: efficientnet_lite0 if the pretrained extra is installed, else edge_resnet_patch)
    pretrained: bool | None = None    # start from ImageNet weights (default: when the model has them installed)
    input_size: int | None = None     # evaluation / deployment input side (the exported contract)
    train_size: int | None = None     # training crop side (default: input_size)
    color_order: str = "RGB"
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None      # "sgd" (Nesterov) or "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    layer_decay: float | None = None  # learning rate x decay^(depth from the output) per layer group (1 = off)
    head_lr_mult: float | None = None  # learning-rate multiplier of the classifier
    precision: Literal["auto", "fp32", "bf16"] | None = None  # bf16: autocast (auto: where the CPU has bf16 instructions)
    channels_last: bool = True        # NHWC activations in training (faster convolutions on CPU)
    label_smoothing: float = 0.1
    ema_decay: float | None = None    # per-step EMA of the weights (0 = off); the EMA is what is kept
    select: Literal["last", "val"] = "last"  # best.pt holds the last epoch, or the best val top-1 one
    mix_prob: float = 0.0             # probability per batch of CutMix (or MixUp, half the time)
    teacher: str | None = None        # classifier checkpoint to distil from (soft targets + labels)
    distill_alpha: float = 0.7        # weight of the teacher's soft targets in the loss
    distill_temperature: float = 2.0
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

    @property
    def recipe(self) -> str:
        return "finetune" if self.pretrained else "scratch"


def resolve(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the model, ``pretrained`` and every field left at None filled in from the
    recipe ("finetune" when starting from ImageNet weights, else "scratch")."""
    model = cfg.model
    if model is None:
        model = DEFAULT_PRETRAINED_MODEL if pretrained_installed(DEFAULT_PRETRAINED_MODEL) else DEFAULT_SCRATCH_MODEL
    pretrained = cfg.pretrained
    if pretrained is None:
        pretrained = cfg.init_from is None and pretrained_installed(model)
    fields = dict(RECIPES["finetune" if pretrained else "scratch"])
    fields.update({k: v for k, v in dataclasses.asdict(cfg).items() if k in fields and v is not None})
    if fields["train_size"] is None:
        fields["train_size"] = fields["input_size"]
    return dataclasses.replace(cfg, model=model, pretrained=pretrained, **fields)


def make_preprocess(cfg: TrainConfig, facts: dict | None = None) -> PreprocessConfig:
    """The contract of a resolved config; ``facts`` (the model's declared input facts, e.g.
    the normalisation its ImageNet weights expect) override the colour order and mean/std."""
    facts = facts or {}
    color = facts.get("color_order", cfg.color_order) if cfg.color_order != "GRAY" else "GRAY"
    mean, std = MEAN_STD[color]
    if "mean" in facts and color == facts.get("color_order"):
        mean, std = facts["mean"], facts["std"]
    return PreprocessConfig(input_size=(cfg.input_size, cfg.input_size), color_order=color,
                            resize="shorter_side_crop", crop_fraction=1.0, interpolation="area",
                            mean=mean, std=std, layout="NCHW")
