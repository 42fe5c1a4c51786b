"""Class-conditional DCGAN-family generator and projection discriminator (Miyato & Koyama 2018).

Generator  (z [B, z_dim], label [B]) -> images [B, C, S, S] in [-1, 1], RGB or gray:
    e = embed(label); h = fc([z, e]) -> [B, W, s0, s0]; then ``n_up`` blocks of
    nearest-upsample x2 -> conv3x3 -> class-conditional BatchNorm(e) -> ReLU, halving the width;
    finally conv3x3 -> tanh. ``s0 * 2**n_up == S``: the output really has the configured size.
Discriminator (images, label) -> score [B]:
    spectral-norm convs (LeakyReLU, stride-2 downsampling) -> ReLU -> sum-pool features h;
    score = linear(h) + <embed(label), h> (projection conditioning).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from .modes import HierEmbedding, latent_share, mode_offsets, mode_parents


def upsampling_plan(image_size: int) -> tuple[int, int]:
    """(s0, n_up): the starting side and the number of x2 upsamplings that reach ``image_size``.
    Upsamples while the side stays even and the start stays >= 3 (64 -> 4x16, 48 -> 3x16, 28 -> 7x4)."""
    if image_size < 8 or image_size % 4:
        raise ValueError(f"image_size must be a multiple of 4 and >= 8, got {image_size}")
    s0, n_up = image_size, 0
    while s0 % 2 == 0 and s0 // 2 >= 3:
        s0 //= 2
        n_up += 1
    return s0, n_up


class CondBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; gain and bias are linear functions of the class embedding."""

    def __init__(self, channels: int, embed_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(embed_dim, channels)
        self.bias = nn.Linear(embed_dim, channels)
        for lin in (self.gain, self.bias):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x, e):
        return self.bn(x) * (1 + self.gain(e))[:, :, None, None] + self.bias(e)[:, :, None, None]


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, embed_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm = CondBatchNorm2d(cout, embed_dim)

    def forward(self, x, e):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.relu(self.norm(self.conv(x), e))


class Generator(nn.Module):
    """``mode_bounds`` (sub-class conditioning, :mod:`.modes`): the embedding is of the class's
    sub-classes, the one drawn chosen from z[:, 0] by these cumulative shares; None = of the class."""

    def __init__(self, num_classes: int, z_dim: int = 128, image_size: int = 64, channels: int = 3,
                 width: int = 256, embed_dim: int = 64, min_width: int = 16,
                 mode_bounds: list[list[float]] | None = None):
        super().__init__()
        self.num_classes, self.z_dim, self.image_size, self.channels = num_classes, z_dim, image_size, channels
        self.s0, n_up = upsampling_plan(image_size)
        self.width = width
        self.embed = nn.Embedding(num_classes, embed_dim)
        if mode_bounds is not None:
            if len(mode_bounds) != num_classes:
                raise ValueError(f"mode_bounds has {len(mode_bounds)} classes, the generator {num_classes}")
            # derived from the kwargs, not weights: kept out of the state dict
            self.register_buffer("mode_bounds", torch.tensor(mode_bounds, dtype=torch.float32), persistent=False)
            self.register_buffer("mode_offsets", torch.tensor(mode_offsets(mode_bounds)), persistent=False)
            self.embed = HierEmbedding(mode_parents(mode_bounds), embed_dim)   # class + sub-class
        self.has_modes = mode_bounds is not None
        self.fc = nn.Linear(z_dim + embed_dim, width * self.s0 * self.s0)
        self.norm0 = CondBatchNorm2d(width, embed_dim)
        blocks, cin = [], width
        for _ in range(n_up):
            cout = max(min_width, cin // 2)
            blocks.append(UpBlock(cin, cout, embed_dim))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(cin, channels, 3, 1, 1)

    def mode_of(self, z, label):  # -> [B] the embedding row: the class, or its sub-class chosen by z[:, 0]
        if not self.has_modes:
            return label
        u = latent_share(z[:, :1])                                              # [B, 1] in (0, 1)
        return self.mode_offsets[label] + (u >= self.mode_bounds[label]).long().sum(dim=1)

    def forward(self, z, label, cond: float = 1.0):  # z [B, z_dim] float32, label [B] int64 -> [B, C, S, S] in [-1, 1]
        # cond < 1: transitional conditioning (training only), the class embedding scaled down (0 = unconditional)
        e = self.embed(self.mode_of(z, label))
        if cond != 1.0:
            e = e * cond
        h = self.fc(torch.cat([z, e], dim=1)).reshape(-1, self.width, self.s0, self.s0)
        h = F.relu(self.norm0(h, e))
        for block in self.blocks:
            h = block(h, e)
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, image_size: int = 64, channels: int = 3, width: int = 64,
                 max_width: int = 512):
        super().__init__()
        layers = [spectral_norm(nn.Conv2d(channels, width, 3, 1, 1)), nn.LeakyReLU(0.2)]
        side, cin = image_size, width
        while side % 2 == 0 and side // 2 >= 3:
            cout = min(max_width, cin * 2)
            layers += [spectral_norm(nn.Conv2d(cin, cout, 3, 2, 1)), nn.LeakyReLU(0.2)]
            side, cin = side // 2, cout
        self.body = nn.Sequential(*layers)
        self.num_features = cin
        self.linear = spectral_norm(nn.Linear(cin, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, cin))

    def features(self, x):  # [B, C, S, S] -> [B, F] (sum-pooled)
        return F.relu(self.body(x)).sum(dim=(2, 3))

    def forward(self, x, label, cond: float = 1.0):  # -> [B] real/fake score (hinge loss)
        h = self.features(x)                       # cond: weight of the class projection (0 = unconditional)
        return self.linear(h).squeeze(1) + cond * (self.embed(label) * h).sum(dim=1)


def gen_kwargs(cfg, num_classes: int, mode_bounds: list[list[float]] | None = None) -> dict:
    """Generator constructor arguments from a GanConfig (stored in checkpoints; ``mode_bounds`` only
    with sub-class conditioning, so older checkpoints match)."""
    return {"num_classes": num_classes, "z_dim": cfg.z_dim, "image_size": cfg.image_size,
            "channels": cfg.channels, "width": cfg.g_width, "embed_dim": cfg.embed_dim,
            **({"mode_bounds": mode_bounds} if mode_bounds is not None else {})}


def disc_kwargs(cfg, num_classes: int, guidance_classes: int | None = None,
                mode_classes: list[int] | None = None) -> dict:
    """Discriminator constructor arguments from a GanConfig, with its ``arch`` (see :func:`build_discriminator`).
    ``num_classes``: what D is conditioned on (the sub-classes with --subclasses); ``guidance_classes``:
    what the guidance classifier names, when not those; ``mode_classes``: the class of each sub-class."""
    base = {"num_classes": num_classes, "image_size": cfg.image_size, "channels": cfg.channels}
    if cfg.resolved_discriminator() == "projected":
        # keys absent when off, so older checkpoints match
        guidance = {"guidance": True} if cfg.class_guidance > 0 else {}
        if guidance and guidance_classes is not None and guidance_classes != num_classes:
            guidance["guidance_classes"] = guidance_classes
        pooled = {"pooled": True} if cfg.mode_seeking > 0 and cfg.mode_seeking_space == "features" else {}
        modes = {"mode_classes": mode_classes} if mode_classes is not None else {}
        return {"arch": "projected", **base, "feature_size": cfg.feature_size, "projection_seed": cfg.seed,
                "pixel_width": cfg.pixel_d_width, **guidance, **pooled, **modes}
    return {"arch": "dcgan", **base, "width": cfg.d_width}


def build_discriminator(kwargs: dict, pretrained: bool = True) -> nn.Module:
    """The discriminator of ``disc_kwargs``: "dcgan" (trained from scratch, :class:`Discriminator`)
    or "projected" (frozen ImageNet Lite0 features, :mod:`.projected`; ``pretrained=False`` only
    in tests without the weights package)."""
    kw = dict(kwargs)
    arch = kw.pop("arch", "dcgan")
    if arch == "projected":
        from .projected import ProjectedDiscriminator

        return ProjectedDiscriminator(**kw, pretrained=pretrained)
    if arch != "dcgan":
        raise ValueError(f"unknown discriminator {arch!r} (dcgan, projected)")
    return Discriminator(**kw)


class EMA:
    """Exponential moving average of a generator's parameters (buffers are recomputed with
    :func:`standing_stats` before the EMA generator is used)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        # warm-up: early on the average follows the (fast-changing) generator closely
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1 - d)


@torch.no_grad()
def standing_stats(gen: Generator, label_pool: torch.Tensor, batches: int = 8, batch_size: int = 64,
                   seed: int = 0, cond: float = 1.0) -> Generator:
    """Recompute BatchNorm running statistics of ``gen`` from its own samples (exact average over
    ``batches`` batches), then put it in eval mode. Labels are drawn from ``label_pool``; ``cond``:
    the conditioning weight the samples are drawn with (see :meth:`Generator.forward`)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    gen.train()
    for _ in range(batches):
        z = torch.randn(batch_size, gen.z_dim, generator=g)
        y = label_pool[torch.randint(len(label_pool), (batch_size,), generator=g)]
        gen(z, y, cond=cond)
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    return gen.eval()


@torch.no_grad()
def fold_generator_batchnorm(gen: Generator) -> Generator:
    """Fold every (eval-mode) BatchNorm of ``gen`` into the layer before it, in place: the fc
    rows of each channel for the first one, the conv for the others. Same outputs, fewer nodes
    (and no per-channel quantization of BatchNorm vectors)."""
    gen.eval()

    def scale_shift(bn: nn.BatchNorm2d):
        a = torch.rsqrt(bn.running_var + bn.eps)
        return a, -bn.running_mean * a

    if isinstance(gen.norm0.bn, nn.BatchNorm2d):
        a, b = scale_shift(gen.norm0.bn)
        per = gen.s0 * gen.s0
        w = gen.fc.weight.view(gen.width, per, -1)
        w.mul_(a[:, None, None])
        gen.fc.bias.view(gen.width, per).mul_(a[:, None]).add_(b[:, None])
        gen.norm0.bn = nn.Identity()
    for block in gen.blocks:
        if isinstance(block.norm.bn, nn.BatchNorm2d):
            a, b = scale_shift(block.norm.bn)
            block.conv.weight.mul_(a[:, None, None, None])
            block.conv.bias.mul_(a).add_(b)
            block.norm.bn = nn.Identity()
    return gen
