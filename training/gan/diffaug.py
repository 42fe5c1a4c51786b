"""Differentiable augmentation (in the spirit of DiffAugment, Zhao et al. 2020) for GAN training
on small data: the same random transforms are applied to real and fake images before the
discriminator, and gradients flow through them to the generator.

Images are [B, C, H, W] in [-1, 1]; every transform is per-sample random and differentiable.
"""
from __future__ import annotations

import torch


def _rand(x, g, *shape):
    return torch.rand(x.shape[0], *shape, generator=g, dtype=x.dtype)


def brightness(x, g):
    return x + (_rand(x, g, 1, 1, 1) - 0.5)


def saturation(x, g):
    if x.shape[1] == 1:
        return x
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x, g, 1, 1, 1) * 2) + mean


def contrast(x, g):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, g, 1, 1, 1) + 0.5) + mean


def translation(x, g, ratio: float = 0.125):
    """Shift each image by up to ``ratio`` of its size in x and y, filling with zeros (mid-grey)."""
    b, c, h, w = x.shape
    sy, sx = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    dy = torch.randint(-sy, sy + 1, (b, 1), generator=g)
    dx = torch.randint(-sx, sx + 1, (b, 1), generator=g)
    iy = torch.arange(h)[None, :] + sy - dy            # [B, H] rows into the padded image
    ix = torch.arange(w)[None, :] + sx - dx            # [B, W]
    padded = torch.nn.functional.pad(x, (sx, sx, sy, sy))
    out = padded[torch.arange(b)[:, None, None], :, iy[:, :, None], ix[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2)


def cutout(x, g, ratio: float = 0.5):
    """Zero a random square of ``ratio`` times the image size in each image."""
    b, _, h, w = x.shape
    ch, cw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=g)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=g)
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    y0, x0 = cy - ch // 2, cx - cw // 2
    inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)  # [B, H, W]
    return x * (~inside)[:, None].to(x.dtype)


POLICIES = {"color": (brightness, saturation, contrast), "translation": (translation,), "cutout": (cutout,)}


def diff_augment(x: torch.Tensor, policies, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the named policies (any of "color", "translation", "cutout") in that order."""
    for name in policies:
        for fn in POLICIES[name]:
            x = fn(x, generator)
    return x
