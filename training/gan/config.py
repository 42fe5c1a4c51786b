"""GAN training options (torch-free, so the CLI builds its flags without importing torch)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from skulens import SkulensError
from skulens.internal import option

DIFFAUG_POLICIES = ("color", "translation", "cutout")


class GanConfigError(SkulensError, ValueError):
    """An invalid GAN option (the message lists every problem)."""


@dataclass
class GanConfig:
    """Options of :func:`skulens.training.gan.train_gan`; each field is a ``skulens gan train`` flag
    with the help text below."""

    data: str = option(help="dataset folder (class folders or split lists) or an .npz with x [N,H,W(,C)] "
                       "uint8 and y [N] (optional labels)")
    out: str = option("runs/gan", "run folder: last.pt, history, per-epoch sample grids")
    classes: str | None = option(None, "comma-separated class names or ids to train on; unset: all classes")
    image_size: int = option(64, "output resolution in pixels (a multiple of 4, >= 8)")
    channels: int = option(3, "3 = RGB, 1 = gray", choices=(1, 3))
    z_dim: int = option(128, "length of the random latent vector")
    embed_dim: int = option(64, "length of the class embedding fed to the generator")
    discriminator: Literal["auto", "projected", "dcgan"] = option(
        "auto", "auto = projected for RGB where the pretrained extra is installed, else dcgan; projected: trained heads over a frozen ImageNet EfficientNet-Lite0 seen through fixed random "
        "projections (needs the pretrained extra, RGB); dcgan: a small discriminator learnt from scratch (baseline)")
    feature_size: int = option(128, "projected: side the images are resized to before the ImageNet network "
                               "(a multiple of 32, >= 128; larger is slower)")
    pixel_d_width: int = option(32, "projected: width of a small discriminator learnt on the pixels beside the "
                                "frozen-feature heads, losses summed (0 = projected heads only)")
    class_guidance: float = option(0.0, "projected: weight of the classifier-guidance loss, the cross-entropy of "
                                   "a frozen linear classifier on the ImageNet network's pooled features of the "
                                   "generated images (fitted on the real images before training; 0 = off)")
    precision: Literal["auto", "fp32", "bf16"] = option(
        "auto", "bfloat16 autocast of the projected discriminator and of --coverage's candidate draws (auto = "
                "where the CPU/GPU has native bf16)")
    max_minutes: float = option(0.0, "stop after the first epoch that ends past this much training time "
                                "(0 = no limit; for equal-time comparisons)")
    g_width: int = option(256, "generator channels at the lowest resolution (halved at every upsampling)")
    d_width: int = option(64, "discriminator channels at full resolution (doubled at every downsampling)")
    epochs: int = option(100, "training epochs")
    steps_per_epoch: int = option(0, "optimiser steps per epoch (0 = one pass over the real images)")
    batch_size: int = option(64, "images per optimiser step (real and generated each)")
    lr_g: float = option(2e-4, "generator Adam learning rate")
    lr_d: float = option(4e-4, "discriminator Adam learning rate (two time-scale updates: D learns "
                         "faster, one D step per G step)")
    beta1: float = option(0.0, "Adam beta1 of both optimisers")
    beta2: float = option(0.999, "Adam beta2 of both optimisers")
    ema_decay: float = option(0.999, "decay of the generator's moving average (the exported generator), in [0, 1)")
    mode_seeking: float = option(1.0, "MSGAN mode-seeking weight against intra-class mode collapse (0 = off)")
    mode_seeking_space: Literal["pixels", "features"] = option(
        "pixels", "where mode seeking measures how far apart two images of one class are: pixels (MSGAN's L1 "
                  "distance) or features (cosine distance of the frozen ImageNet network's pooled features, the "
                  "space the within-class spread is measured in; projected discriminator only)")
    coverage: float = option(0.0, "weight of the coverage term (IMLE): each real image's nearest of "
                             "--coverage-candidates generated images of its class is pulled towards it (mean "
                             "absolute pixel difference), so the samples must cover every real photo, not a few "
                             "looks of each class (0 = off)")
    coverage_candidates: int = option(8, "with --coverage: generated candidates per real image when its nearest "
                                      "latent is chosen")
    coverage_every: int = option(500, "with --coverage: re-choose every real image's nearest latent every this "
                                 "many steps (one choice costs real images x candidates generator passes)")
    subclasses: int = option(1, "projected: split each class into up to this many sub-classes by k-means of the "
                             "frozen ImageNet features of its real images and condition G and D's heads on them "
                             "(class + sub-class embedding; guidance still names the class); the generator picks "
                             "one from the latent by their shares, so it must draw every way a product is "
                             "photographed (1 = off)")
    subclass_min_images: int = option(8, "with --subclasses: a class with n real images gets at most n // this many "
                                      "sub-classes (k-means itself does not bound a sub-class's size)")
    transition_start: int = option(0, "transitional conditioning (Shahbazi et al. 2022, against the collapse of "
                                   "each class to a few looks on small datasets): G, D and the guidance stay "
                                   "unconditional for this many steps, then the class is faded in over "
                                   "--transition-steps (0 and 0 = conditional from the first step)")
    transition_steps: int = option(0, "steps over which the class conditioning is faded in linearly, "
                                   "from --transition-start on")
    diffaug: str = option("color,translation,cutout", "comma-separated DiffAugment policies applied to real "
                          f"and generated images, from {', '.join(DIFFAUG_POLICIES)} (\"\" = none)")
    hflip: bool = option(True, "random horizontal flips of the real images")
    seed: int = option(0, "random seed (weights, latents, batches)")
    threads: int = option(0, "torch CPU threads (0 = torch's default)")
    resume: bool = option(False, "continue from OUT/last.pt when it exists (same classes and architecture)")
    snapshot_every: int = option(0, "also keep the run's whole state every N epochs as epochNNN.pt (exportable, "
                                    "like last.pt; 0 = off)")
    grid_classes: str | None = option(None, "comma-separated classes of the per-epoch sample grid; "
                                      "unset: the first 10")
    grid_per_class: int = option(8, "samples per class in the per-epoch grid")
    classifier: str | None = option(None, "a classifier checkpoint of the same classes, kept in the "
                                    "checkpoint: export uses it to check INT8 images, gan eval as feature space")

    def __post_init__(self):
        problems = []
        if self.image_size < 8 or self.image_size % 4:
            problems.append(f"image_size must be a multiple of 4 and >= 8, got {self.image_size}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 (gray) or 3 (RGB), got {self.channels}")
        for name in ("z_dim", "embed_dim", "g_width", "d_width", "epochs", "batch_size", "grid_per_class"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.discriminator == "projected" and self.channels != 3:
            problems.append("the projected discriminator needs RGB images (channels 3); use --discriminator dcgan")
        if self.discriminator == "projected" and (self.feature_size < 128 or self.feature_size % 32):
            problems.append(f"feature_size must be a multiple of 32 and >= 128, got {self.feature_size}")
        if self.pixel_d_width < 0:
            problems.append(f"pixel_d_width must be >= 0, got {self.pixel_d_width}")
        if self.class_guidance < 0:
            problems.append(f"class_guidance must be >= 0, got {self.class_guidance}")
        if self.class_guidance and self.discriminator == "dcgan":
            problems.append("class_guidance needs the projected discriminator (its ImageNet features)")
        if self.max_minutes < 0:
            problems.append(f"max_minutes must be >= 0, got {self.max_minutes}")
        if self.snapshot_every < 0:
            problems.append(f"snapshot_every must be >= 0, got {self.snapshot_every}")
        if self.steps_per_epoch < 0:
            problems.append(f"steps_per_epoch must be >= 0, got {self.steps_per_epoch}")
        if self.mode_seeking < 0:
            problems.append(f"mode_seeking must be >= 0, got {self.mode_seeking}")
        if self.mode_seeking_space not in ("pixels", "features"):
            problems.append(f"mode_seeking_space must be pixels or features, got {self.mode_seeking_space!r}")
        if self.mode_seeking_space == "features" and self.discriminator == "dcgan":
            problems.append("mode_seeking_space features needs the projected discriminator (its ImageNet features)")
        if self.coverage < 0 or self.coverage_candidates < 1 or self.coverage_every < 1:
            problems.append(f"coverage must be >= 0 and coverage_candidates, coverage_every >= 1, got {self.coverage}, "
                            f"{self.coverage_candidates} and {self.coverage_every}")
        if self.coverage and self.subclasses > 1:
            problems.append("coverage and subclasses cannot be combined (the sub-class is drawn from the latent)")
        if not 1 <= self.subclasses <= 16 or self.subclass_min_images < 1:
            problems.append(f"subclasses must be in [1, 16] and subclass_min_images >= 1, got {self.subclasses} "
                            f"and {self.subclass_min_images}")
        if self.subclasses > 1 and self.discriminator == "dcgan":
            problems.append("subclasses needs the projected discriminator (the groups are found in its ImageNet features)")
        if self.transition_start < 0 or self.transition_steps < 0:
            problems.append(f"transition_start and transition_steps must be >= 0, got {self.transition_start} "
                            f"and {self.transition_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            problems.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        unknown = [p for p in self.policies if p not in DIFFAUG_POLICIES]
        if unknown:
            problems.append(f"unknown diffaug policies {unknown} (choose from {DIFFAUG_POLICIES})")
        if problems:
            raise GanConfigError("invalid GanConfig: " + "; ".join(problems))

    def conditioning(self, step: int) -> float:
        """Weight of the class conditioning at optimiser step ``step`` (0-based): 0 before
        ``transition_start``, rising linearly to 1 over ``transition_steps``, then 1."""
        if step < self.transition_start:
            return 0.0
        if self.transition_steps == 0:
            return 1.0
        return min(1.0, (step - self.transition_start + 1) / self.transition_steps)

    @property
    def transition_end(self) -> int:
        """The first step trained fully conditional."""
        return self.transition_start + max(0, self.transition_steps - 1)

    def resolved_discriminator(self) -> str:
        """"projected" or "dcgan" (``auto`` resolved: projected needs RGB and the pretrained extra)."""
        if self.discriminator != "auto":
            return self.discriminator
        from ..pretrained import pretrained_installed

        return "projected" if self.channels == 3 and pretrained_installed("efficientnet_lite0") else "dcgan"

    @property
    def policies(self) -> list[str]:
        return [p.strip() for p in (self.diffaug or "").split(",") if p.strip()]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class GanEvalConfig:
    """Options of :func:`skulens.training.gan.evaluate_gan`; each field is a ``skulens gan eval``
    flag with the help text below (``--no-fid --no-cas`` for latency only)."""

    generator: str = option(help="the fp32 generator .onnx (skulens export GAN_CHECKPOINT)")
    data: str = option(help="the dataset the generator was trained on: its train and test splits are the real sets")
    classifier: str | None = option(None, "a classifier checkpoint trained on --data: the training recipe "
                                    "reused for CAS and the low-data arms (and the FID space with "
                                    "--feature-space classifier); needed for those")
    feature_space: Literal["imagenet", "classifier"] = option(
        "imagenet", "FID/KID features: the fixed ImageNet EfficientNet-Lite0 (pretrained extra) or --classifier's")
    sample_classes: str | None = option(None, "comma-separated classes of the real-vs-generated sample grid "
                                        "(unset: the first 10)")
    out: str = option("runs/gan_eval", "folder for gan_eval.json, gan_eval.png (gan_eval_add.* for the low-data "
                      "arm with --gan-mode add) and the runs it trains")
    int8: str | None = option(None, "the INT8 generator to time; unset: <generator>.int8.onnx or "
                              ".int8.rejected.onnx beside it")
    lowdata_data: str | None = option(None, "a low-data subset of --data for the augmentation experiment "
                                      "(needs --lowdata-generator)")
    lowdata_generator: str | None = option(None, "a generator .onnx trained ONLY on --lowdata-data")
    seeds: int = option(3, "training seeds per low-data arm (real only, real + GAN)")
    lowdata_epochs: int = option(60, "epochs of the real-only low-data arm")
    gan_ratio: float = option(1.0, "generated images per real image in the real + GAN arm")
    gan_mode: Literal["mix", "add"] = option(
        "mix", "how the real + GAN arm uses the generated images (skulens train --gan-augment-mode): mix = in the "
               "epoch's dataset (with --equal-steps: fewer epochs, so fewer passes over the real photos); add = a "
               "generated batch beside each real batch, the same epochs, steps and real batches as the real-only arm")
    gan_epochs: int = option(0, "add mode: generated batches in the first N epochs only, the rest on the real "
                                "photos alone (0 = every epoch; skulens train --gan-augment-epochs)")
    gan_bn: Literal["joint", "separate"] = option(
        "joint", "add mode: normalise the generated batch with the real one (joint) or on its own, leaving "
                 "BatchNorm's running statistics to the real photos (separate; skulens train --gan-augment-bn)")
    equal_steps: bool = option(True, "give the real + GAN arm the same number of optimiser steps as the "
                               "real-only arm (fewer epochs) instead of the same number of epochs")
    fid: bool = option(True, "measure FID in the classifier's feature space (and its top-1 on generated images)")
    cas: bool = option(True, "measure CAS: a classifier trained on generated images only, tested on real ones")
    cas_per_real: float = option(1.0, "generated CAS training images per real training image of each class "
                                 "(1 = the real split's counts, as CAS is defined; more = a larger synthetic set, "
                                 "the same epochs)")
    cas_equal_steps: bool = option(False, "with --cas-per-real K > 1: the recipe's epochs and warm-up divided by K, "
                                   "so the CAS classifier takes the optimiser steps of CAS at 1x and sees each "
                                   "generated image about once (a stream of fresh images, not longer training)")
    gan_pool: int = option(4, "distinct generated images per synthetic slot in the real + GAN arm "
                           "(skulens train --gan-augment-pool)")
    latent_scale: float = option(1.0, "draw the generated images' latents from N(0, s^2) (skulens GeneratorOptions."
                                 "latent_scale): > 1 more varied and less faithful samples, for FID, CAS and "
                                 "the low-data arm")
    latency: bool = option(True, "time the fp32 and INT8 generators (1 thread)")
    threads: int = option(1, "CPU threads for generation and the training runs (0 = all)")
    seed: int = option(0, "first random seed (generation and the training runs)")

    def __post_init__(self):
        if (self.seeds < 1 or self.lowdata_epochs < 1 or self.gan_ratio <= 0 or self.threads < 0
                or not self.cas_per_real > 0 or not 0 < self.latent_scale <= 10 or not 1 <= self.gan_pool <= 256):
            raise GanConfigError("seeds and lowdata_epochs must be >= 1, gan_ratio and cas_per_real > 0, "
                                 "threads >= 0, latent_scale in (0, 10], gan_pool in [1, 256]")
        if (self.gan_bn == "separate" or self.gan_epochs) and self.gan_mode != "add":
            raise GanConfigError("--gan-bn separate and --gan-epochs need --gan-mode add (in mix mode the generated "
                                 "images share the real batches)")
        if not 0 <= self.gan_epochs <= self.lowdata_epochs:
            raise GanConfigError(f"gan_epochs must be in [0, lowdata_epochs], got {self.gan_epochs}")
        if self.cas_equal_steps and not self.cas_per_real > 1:
            raise GanConfigError(f"cas_equal_steps needs cas_per_real > 1 (got {self.cas_per_real:g}): at 1x the "
                                 "steps are already those of CAS")
        if not self.classifier and (self.cas or self.lowdata_data or self.feature_space == "classifier"):
            raise GanConfigError("--classifier is needed for CAS, the low-data arms and --feature-space classifier "
                                 "(or pass --no-cas)")
        if bool(self.lowdata_data) != bool(self.lowdata_generator):
            raise GanConfigError("give both --lowdata-data and --lowdata-generator (a generator "
                                 "trained only on that low-data subset), or neither")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
