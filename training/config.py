"""Training configuration (torch-free, so the CLI can build its flags without importing torch).

Fields left at ``None`` come from the run's *recipe* (:func:`resolve`): "finetune" for a model
that starts from ImageNet weights, "scratch" otherwise. By default a pretrained
EfficientNet-Lite0 is fine-tuned when the ``pretrained`` extra is installed, else the
from-scratch edge model is trained.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal

from skulens import PreprocessConfig, SkulensError
from skulens.internal import config_to_dict, option

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
# The registry's names, torch-free so that the CLI checks --model at parse time (a test keeps
# this tuple equal to models.list_models()).
MODEL_NAMES = ("edge_resnet", "edge_resnet_patch", "edge_resnet_slim", "edge_resnet_tiny", "efficientnet_lite0",
               "efficientnet_lite1", "efficientnet_lite2", "seed_cnn")

# Small datasets: where the user left them at None, these settings follow the run's size (the
# number of training images n, hence of optimiser steps) rather than the recipe alone. On a
# dataset as large as Grocery (2640 training photos) every rule leaves the recipe as it is.
# Why (#13): 10 Grocery classes x 30 photos (240 to train) with the finetune recipe's values run
# 84 steps, and an EMA with a 200-step horizon keeps ~66 % (0.995^84) of the weights of the first
# step: 57.8 % top-1 on the 396 Grocery test photos of those classes (EMA off: 77.3 %). With the
# derived values (batch 16, lr 0.01, 12 epochs = 180 steps, EMA 0.9777): 77.8 %. (One seed each,
# the default 224/192 px; at 64/56 px 47.0 %, 57.6 % and 63.6 %.) More epochs did not help there:
# 20 epochs gave 63.6 % at 64 px too, and on 10 x 12 photos 12/17/36 epochs gave 93.1/93.1/92.1 %
# at 224 px, so epochs only rise where a run would otherwise take under MIN_STEPS steps.
MIN_BATCH = 16              # the batch is halved, down to this, while an epoch would have fewer steps than:
MIN_STEPS_PER_EPOCH = 8
MIN_STEPS = 100             # epochs are raised (to at most MAX_EPOCH_FACTOR x the recipe's) to reach this many steps
MAX_EPOCH_FACTOR = 3
EMA_HORIZON_FRACTION = 0.25  # the EMA's horizon 1 / (1 - decay) is at most this fraction of the run's steps...
MIN_EMA_HORIZON = 10         # ...and the EMA is off where that horizon would be shorter than this
WARMUP_FRACTION = 0.1        # the warm-up is at most this fraction of the run


class TrainConfigError(SkulensError, ValueError):
    """A training setting that cannot work (an unknown choice, an out-of-range value, a run
    folder that already holds a run)."""


def _recipe(text: str, values: str) -> str:
    """Help text of a field whose None means the recipe's value ("finetune" / "scratch")."""
    return f"{text} (None = from the recipe: {values})"


@dataclass
class TrainConfig:
    data: str = option(help="dataset folder: class sub-folders (ROOT/<class>/*.jpg, split 80/10/10 per class), "
                            "train/, val/, test/ sub-folders of class folders, or train.txt/val.txt/test.txt "
                            "split lists")
    out: str = option("runs/train", "run folder: best.pt, last.pt, results.csv, args.json, metrics.json, plots; "
                                    "an earlier run there is kept unless --exist-ok or --resume")
    model: str | None = option(None, "network from the registry (None = efficientnet_lite0 fine-tuned from "
                                     "ImageNet weights when the 'pretrained' extra is installed, else "
                                     "edge_resnet_patch from scratch)", choices=MODEL_NAMES)
    pretrained: bool | None = option(None, "start from ImageNet weights, which selects the 'finetune' recipe "
                                           "over 'scratch' (None = when the model's weights are installed)")
    input_size: int | None = option(None, _recipe("side of the square model input at evaluation and "
                                                  "deployment, the exported contract", "224 finetune, 128 scratch"))
    train_size: int | None = option(None, _recipe("side of the training crops", "6/7 of --input-size "
                                                  "finetune, so 192 at 224, --input-size scratch"))
    color_order: Literal["RGB", "BGR", "GRAY"] = option("RGB", "channel order the model sees (a pretrained "
                                                               "model's own order wins)")
    epochs: int | None = option(None, _recipe("passes over the training images", "12 finetune, 60 scratch; "
                                              "small datasets get up to 3x that, for at least 100 optimiser steps"))
    batch_size: int | None = option(None, _recipe("images per optimiser step (the global batch under torchrun)",
                                                  "32 finetune, 64 scratch, halved down to 16 while an epoch "
                                                  "would have under 8 steps"))
    optimizer: Literal["sgd", "adamw"] | None = option(None, _recipe("sgd (Nesterov momentum 0.9) or adamw", "sgd"))
    lr: float | None = option(None, _recipe("peak learning rate of the warm-up + cosine schedule",
                                            "0.02 finetune, 0.1 scratch, scaled with a batch size the run derives"))
    weight_decay: float | None = option(None, _recipe("L2 penalty on weights, not on biases or BatchNorm",
                                                      "5e-5 finetune, 5e-4 scratch"))
    warmup_epochs: float | None = option(None, _recipe("linear learning-rate warm-up, in epochs",
                                                       "1 finetune, 2 scratch, at most a tenth of the run"))
    layer_decay: float | None = option(None, _recipe("learning rate x decay^(layer groups from the output), so "
                                                     "early pretrained layers change less; 1 = off",
                                                     "0.9 finetune, 1 scratch"))
    head_lr_mult: float | None = option(None, _recipe("learning-rate multiplier of the classifier",
                                                      "5 finetune, 1 scratch"))
    precision: Literal["auto", "fp32", "bf16"] | None = option(
        None, _recipe("bf16 = bfloat16 autocast; auto = bf16 where the CPU or GPU computes it natively",
                      "auto finetune, fp32 scratch"))
    channels_last: bool = option(True, "NHWC activations in training (faster convolutions on CPU)")
    label_smoothing: float = option(0.1, "cross-entropy label smoothing")
    coarse_smoothing: float = option(0.0, "share of the label smoothing given to the other classes of the "
                                          "label's coarse group instead of all classes, so that mistakes stay "
                                          "within the group (needs coarse labels; 0 = off)")
    ema_decay: float | None = option(None, _recipe(
        "per-step exponential moving average of the weights, which is what is evaluated and kept; 0 = off",
        "0.995 finetune, 0.998 scratch, lowered so that its horizon 1/(1-decay) is at most a quarter of the "
        "run's steps, off for runs under 40 steps"))
    select: Literal["last", "val"] = option("last", "what best.pt holds: the last epoch, or the one with the "
                                                    "best val top-1 (noisy on a small val split)")
    patience: int = option(0, "stop early once val top-1 has not improved for this many epochs (0 = off); "
                              "best.pt still follows --select, so pair it with --select val")
    mix_prob: float = option(0.0, "probability per batch of CutMix (or MixUp, half the time)")
    teacher: str | None = option(None, "classifier checkpoint (.pt) to distil from: soft targets + labels")
    distill_alpha: float = option(0.7, "weight of the teacher's soft targets in the loss")
    distill_temperature: float = option(2.0, "softmax temperature of the teacher's soft targets")
    seed: int = option(0, "seed of the initial weights, sampling and augmentation")
    num_workers: int = option(1, "augmentation processes beside the training process (0 = none)")
    threads: int = option(0, "torch intra-op threads (0 = torch's default)")
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to train: auto = the GPU when CUDA is "
                                                            "available, else the CPU")
    init_from: str | None = option(None, "start from another skulens checkpoint's weights (with a new "
                                         "classifier for these classes)")
    freeze_backbone: int = option(0, "epochs training only the classifier first")
    resume: bool = option(False, "continue the interrupted run in --out from its last.pt")
    snapshot_every: int = option(0, "also keep the run's whole state every N epochs as epochNNN.pt, a point "
                                    "that --fork-from can branch from (0 = off)")
    fork_from: str | None = option(None, "branch from another run's snapshot (epochNNN.pt or last.pt) of this "
                                         "same recipe: its weights, EMA, optimiser, schedule and history, then "
                                         "the remaining epochs with this --seed's data order and augmentation "
                                         "(README: averaged, forks kept less of the gain than separate seeds)")
    exist_ok: bool = option(False, "train into an --out folder that holds an earlier run, overwriting its files")
    class_depth: int | None = option(None, "class folders: the folder level that names the classes (1 = "
                                           "ROOT/<class>/, 2 = ROOT/<group>/<class>/, 0 = every folder that "
                                           "directly holds images; None = 1 for flat class folders, an error "
                                           "listing the choices for nested ones)")
    balance: bool = option(False, "class-balanced sampling: every class drawn equally often (with "
                                  "replacement), for imbalanced datasets")
    train_on_val: bool = option(False, "train on the val photos too, for a final model once the recipe is "
                                       "chosen: val is still evaluated each epoch but no longer held out (its "
                                       "figures are optimistic, and so is the 'unknown' threshold export "
                                       "calibrates on it)")
    reduced_decode: float = option(PreprocessConfig.RECOMMENDED_REDUCED_DECODE,
                                   "the contract's JPEG decoding rule, applied to the training photos too: "
                                   "r >= 1 decodes a large JPEG at 1/2, 1/4 or 1/8 scale while it keeps r x the "
                                   "pixels the resize needs (camera frames decode several times faster); 0 = "
                                   "always in full")
    cache_size: int | None = option(None, "shorter side of the decoded training images kept in memory "
                                          "(None = 2 x the input size)")
    gan_augment: str | None = option(None, "generator .onnx whose images are mixed into training (off by default)")
    gan_augment_ratio: float = option(1.0, "synthetic images per real image of each class, per epoch")
    gan_augment_pool: int = option(4, "distinct generated images per synthetic slot: each class's pool holds pool x "
                                   "its slots, generated once before training, and every draw picks one")
    gan_augment_latent_scale: float = option(1.0, "draw the synthetic images' latents from N(0, s^2): > 1 more "
                                             "varied, less faithful images (skulens GeneratorOptions.latent_scale)")
    gan_augment_mode: Literal["mix", "add"] = option(
        "mix", "mix = the synthetic images join the epoch's dataset (more steps per epoch, or fewer epochs at "
               "equal steps); add = each real batch gets ratio x as many synthetic images beside it, their loss "
               "added with a real image's weight (same steps and real batches as without --gan-augment)")
    gan_augment_epochs: int = option(0, "add mode: synthetic batches in the first N epochs only, the rest on the "
                                        "real photos alone (0 = every epoch)")
    gan_augment_bn: Literal["joint", "separate"] = option(
        "joint", "add mode: joint = the synthetic batch goes through the network with the real one (normalised "
                 "together; BatchNorm's running statistics, used at test, mix both); separate = on its own, "
                 "normalised by its own batch statistics, and the running statistics are the real images' only")
    augment: AugmentConfig = option(help="training augmentation (Python only)", default_factory=AugmentConfig)
    model_kwargs: dict = option(help="keyword arguments of the model builder (--model-kwargs JSON where offered)",
                                default_factory=dict)

    def __post_init__(self):
        """Values that cannot work are refused here, before any image is decoded."""
        for name, choices in _choices().items():
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise TrainConfigError(f"{name}={value!r} is not one of {', '.join(map(str, choices))}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("input_size", 8), ("train_size", 8), ("lr", 0.0),
                          ("patience", 0), ("freeze_backbone", 0), ("class_depth", 0), ("num_workers", 0),
                          ("snapshot_every", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise TrainConfigError(f"{name} must be >= {low}, got {value}")
        if not (self.reduced_decode == 0 or self.reduced_decode >= 1):
            raise TrainConfigError(f"reduced_decode must be 0 (decode in full) or >= 1, got {self.reduced_decode}")
        if not 0 <= self.coarse_smoothing <= 1:
            raise TrainConfigError(f"coarse_smoothing must be in [0, 1], got {self.coarse_smoothing}")
        if not (self.gan_augment_ratio > 0 and 0 < self.gan_augment_latent_scale <= 10
                and 1 <= self.gan_augment_pool <= 256):
            raise TrainConfigError(f"gan_augment_ratio must be > 0, gan_augment_latent_scale in (0, 10] and "
                                   f"gan_augment_pool in [1, 256], got {self.gan_augment_ratio}, "
                                   f"{self.gan_augment_latent_scale} and {self.gan_augment_pool}")
        if (self.gan_augment_bn == "separate" or self.gan_augment_epochs) and self.gan_augment_mode != "add":
            raise TrainConfigError("gan_augment_bn='separate' and gan_augment_epochs need gan_augment_mode='add' "
                                   "(in mix mode the synthetic images share the real batches)")
        if self.gan_augment_epochs < 0:
            raise TrainConfigError(f"gan_augment_epochs must be >= 0 (0 = every epoch), got {self.gan_augment_epochs}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise TrainConfigError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @property
    def recipe(self) -> str:
        return "finetune" if self.pretrained else "scratch"


def _choices() -> dict[str, tuple]:
    """The closed sets of values (``Literal`` types) of TrainConfig's str fields."""
    out = {}
    for name, tp in typing.get_type_hints(TrainConfig).items():
        for t in (tp, *typing.get_args(tp)):
            if typing.get_origin(t) is typing.Literal:
                out[name] = typing.get_args(t)
    return out


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps per epoch as the trainer's loader runs them (the last partial batch is
    dropped when there is more than one batch)."""
    return n_train // batch_size if n_train > batch_size else 1


def synthetic_batch_size(ratio: float, batch_size: int, n_train: int) -> int:
    """Generated images beside each real batch in ``--gan-augment-mode add``: ``ratio`` x the real
    batch (``batch_size``, or the whole set where it is smaller: one batch, none dropped)."""
    return round(ratio * min(batch_size, n_train))


def _derive(fields: dict, given: set[str], n_train: int) -> dict:
    """The recipe's ``fields`` adjusted to a run on ``n_train`` images, except those the user
    gave (names in ``given``); see MIN_BATCH and the constants below it."""
    fields = dict(fields)
    if "batch_size" not in given:
        batch = fields["batch_size"]
        while batch > MIN_BATCH and n_train // batch < MIN_STEPS_PER_EPOCH:
            batch //= 2
        if "lr" not in given:  # the same learning rate per image: linear scaling with the batch
            fields["lr"] = round(fields["lr"] * batch / fields["batch_size"], 6)
        fields["batch_size"] = batch
    steps = steps_per_epoch(n_train, fields["batch_size"])
    if "epochs" not in given:
        wanted = math.ceil(MIN_STEPS / steps)
        fields["epochs"] = max(fields["epochs"], min(MAX_EPOCH_FACTOR * fields["epochs"], wanted))
    if "warmup_epochs" not in given:
        fields["warmup_epochs"] = min(fields["warmup_epochs"], round(WARMUP_FRACTION * fields["epochs"], 3))
    if "ema_decay" not in given and fields["ema_decay"] > 0:
        horizon = EMA_HORIZON_FRACTION * fields["epochs"] * steps
        longest = 0.0 if horizon < MIN_EMA_HORIZON else math.floor((1 - 1 / horizon) * 1e4) / 1e4
        fields["ema_decay"] = min(fields["ema_decay"], longest)
    return fields


def resolve(cfg: TrainConfig, n_train: int | None = None) -> TrainConfig:
    """``cfg`` with the model, ``pretrained`` and every field left at None filled in from the
    recipe ("finetune" when starting from ImageNet weights, else "scratch"); given the number of
    training images ``n_train``, the batch size (and with it the learning rate), epochs, warm-up
    and EMA decay the user left at None follow the run's size (see MIN_BATCH)."""
    model = cfg.model
    if model is None:
        model = DEFAULT_PRETRAINED_MODEL if pretrained_installed(DEFAULT_PRETRAINED_MODEL) else DEFAULT_SCRATCH_MODEL
    pretrained = cfg.pretrained
    if pretrained is None:
        pretrained = cfg.init_from is None and pretrained_installed(model)
    fields = dict(RECIPES["finetune" if pretrained else "scratch"])
    given = {k for k in fields if getattr(cfg, k) is not None}
    fields.update({k: getattr(cfg, k) for k in given})
    if "train_size" not in given:  # the recipe's train/test ratio (FixRes) at the input size asked for
        recipe = RECIPES["finetune" if pretrained else "scratch"]
        ratio = (recipe["train_size"] or recipe["input_size"]) / recipe["input_size"]
        fields["train_size"] = (fields["input_size"] if ratio == 1
                                else max(8, 8 * round(fields["input_size"] * ratio / 8)))
    if n_train is not None:
        fields = _derive(fields, given, n_train)
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
                            mean=mean, std=std, layout="NCHW", reduced_decode=cfg.reduced_decode)


@dataclass
class AverageConfig:
    """``skulens average``: one classifier whose weights are the mean of several fine-tuned runs'."""
    checkpoints: tuple[str, ...] = option((), "two or more best.pt of runs fine-tuned from the same pretrained "
                                              "weights (or --init-from checkpoint), same model and classes")
    out: str = option("soup.pt", "the averaged checkpoint to write (export it like a best.pt)")


@dataclass
class SoupConfig:
    """``skulens soup``: train several seeds of one recipe (TrainConfig) and average their weights."""
    members: int = option(4, "runs to train and average, seeds --seed, --seed + 1, ... (README: four Lite1 "
                             "seeds gained +1.0 pp fine, +1.2 pp coarse on the Grocery test split)")
    fork_at: int = option(0, "share the first N epochs: the first run keeps a snapshot there and the others "
                             "fork from it (--fork-from) instead of starting afresh, so the soup costs 1 + "
                             "(members - 1) x (1 - N / epochs) runs instead of members runs, but on Grocery it kept less of "
                             "the gain (README); 0 = independent runs")

    def __post_init__(self):
        if self.members < 2:
            raise TrainConfigError(f"a soup needs members >= 2, got {self.members}")
        if self.fork_at < 0:
            raise TrainConfigError(f"fork_at must be >= 0 (0 = independent runs), got {self.fork_at}")
