"""Coverage term: every real image gets a generated image pulled towards it (IMLE, Li & Malik 2018).

A GAN is free to draw only a few looks of a class: the discriminator punishes unrealistic images,
not missing ones. On small datasets the generator's samples of one class are narrower than the
real photos (within-class spread 0.55-0.61 of real here), and a classifier trained on them fails
on the looks they miss. Implicit Maximum Likelihood Estimation turns that around: for each real
image, find the nearest of ``candidates`` samples the generator draws for its class, and pull that
sample towards the image. A real image no sample comes close to gets the largest pull, so the
generator's distribution is made to *cover* the data, while the adversarial loss keeps the samples
realistic. Measured on Grocery at 64 px (``training/gan/README.md``): the widest samples of any run
in the ImageNet features, but no gain in CAS; off by default.

    every ``coverage_every`` steps:  for each real image x_i of class y_i
        z_i = argmin_{z in m draws of N(0, I)} || pool(G(z, y_i)) - pool(x_i) ||^2   (16 x 16 average pool)
    every step, for the real batch:  loss_cov = weight * mean |G(z_i, y_i) - x_i|   (pixels in [-1, 1])

The latents are re-selected periodically, not every step (as in IMLE): one selection costs
``len(real) * candidates`` generator passes without gradients.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


@torch.no_grad()
def nearest_latents(G, images: torch.Tensor, labels: torch.Tensor, candidates: int, rng: torch.Generator,
                    cond: float = 1.0, chunk: int = 32, side: int = 16, bf16: bool = False) -> torch.Tensor:
    """uint8 real images [N, C, S, S] and their labels [N] -> [N, z_dim]: for each image, the latent
    among ``candidates`` standard-normal draws whose generated image (of the image's class) is
    nearest to it, as squared distance of ``side`` x ``side`` average-pooled pixels. ``bf16``: the
    candidates are drawn under bfloat16 autocast (2x faster where the CPU has native bf16)."""
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    was_training = G.training
    G.train()   # batch statistics, as the generator is trained; this also moves its BatchNorm running
    #             statistics, which nothing uses (the exported EMA generator gets standing statistics)
    chosen = []
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].float() / 127.5 - 1                           # [b, C, S, S]
        y = labels[i:i + chunk]
        b = len(x)
        z = torch.randn(b * candidates, G.z_dim, generator=rng)               # [b * m, z_dim]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):        # a choice, not a gradient
            fake = G(z, y.repeat_interleave(candidates), cond=cond).float()    # [b * m, C, S, S]
        pool = max(1, x.shape[-1] // side)
        d = (F.avg_pool2d(fake, pool).reshape(b, candidates, -1)
             - F.avg_pool2d(x, pool).reshape(b, 1, -1)).pow(2).sum(2)          # [b, m]
        chosen.append(z.view(b, candidates, -1)[torch.arange(b), d.argmin(1)])
    G.train(was_training)
    return torch.cat(chosen)


def coverage_loss(weight: float, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``weight`` times the mean absolute pixel difference of the generated images ``recon`` and the
    real ones ``target`` (both [B, C, S, S] in [-1, 1]); 0 when ``weight`` is 0."""
    if weight <= 0:
        return torch.zeros(())
    return weight * (recon - target).abs().mean()
