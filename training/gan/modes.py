"""Sub-class conditioning ("modes", ``--subclasses K``): each class's real images are split into up
to K groups by k-means of their frozen ImageNet features (e.g. loose fruit / in a bag / a shelf of
them), and G and the projected heads of D are conditioned on the group (its class's embedding plus its own,
:class:`HierEmbedding`) instead of the class, so the generator has to draw
every way a product is photographed, not only its most common look. Classifier guidance still
names the class (and so does the pixel discriminator): fitted on ~10 photos per group it would memorise them (in a first run it named 3 %
of the fakes' groups after 700 steps, where the class-level one names 19 % of their classes).

From the outside the generator stays a plain class-conditional model (z, class) -> image: it picks
the group from the first latent coordinate, u = Phi(z[:, 0]) in (0, 1), by the groups' shares of
the class's real images (``bounds``: the cumulative shares, padded with 2.0). In training, z[:, 0]
of a fake is drawn inside the interval of the group it should show (inverse normal CDF), so the
latent keeps its N(0, 1) distribution and the exported graph picks what training showed D.
"""
from __future__ import annotations

import math

import torch

def _kmeans(x: torch.Tensor, k: int, generator: torch.Generator, iters: int = 50) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding on the rows of ``x`` [n, d] -> assignment [n] in 0..k-1."""
    centres = x[torch.randint(len(x), (1,), generator=generator)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centres).min(dim=1).values.pow(2)
        centres = torch.cat([centres, x[torch.multinomial(d2 + 1e-12, 1, generator=generator)]])
    assign = torch.cdist(x, centres).argmin(dim=1)
    for _ in range(iters):
        centres = torch.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
        new = torch.cdist(x, centres).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def split_modes(features: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int, min_images: int = 8,
                seed: int = 0) -> tuple[torch.Tensor, list[list[float]]]:
    """features [N, F] (pooled ImageNet features of the real images), labels [N] -> (mode [N] int64,
    global group ids in class order, and ``bounds`` [num_classes][k - 1]: each class's cumulative
    group shares without the last (1.0), padded with 2.0 where a class has fewer groups). A class
    gets min(k, n_c // min_images) groups (at least 1); groups are numbered by size, largest first."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(features.float(), dim=1)
    modes = torch.zeros(len(labels), dtype=torch.long)
    bounds, offset = [], 0
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        kc = max(1, min(k, len(idx) // min_images))
        local = _kmeans(x[idx], kc, g) if kc > 1 else torch.zeros(len(idx), dtype=torch.long)
        sizes = torch.bincount(local, minlength=kc)
        order = torch.argsort(sizes, descending=True, stable=True)   # old group id, largest first
        rank = torch.empty_like(order)
        rank[order] = torch.arange(kc)
        modes[idx] = offset + rank[local]
        shares = (sizes[order].double() / max(1, len(idx))).cumsum(0)[:-1].tolist()
        bounds.append([round(s, 6) for s in shares] + [2.0] * (k - kc))
        offset += kc
    return modes, bounds


def mode_parents(bounds: list[list[float]]) -> list[int]:
    """The class of each global group id (a class has one group per bound <= 1, plus its last)."""
    return [c for c, b in enumerate(bounds) for _ in range(1 + sum(v <= 1.0 for v in b))]


def mode_offsets(bounds: list[list[float]]) -> list[int]:
    """The first global group id of each class."""
    parents = mode_parents(bounds)
    return [parents.index(c) for c in range(len(bounds))]


def num_modes(bounds: list[list[float]]) -> int:
    return len(mode_parents(bounds))


class HierEmbedding(torch.nn.Module):
    """Embedding of a sub-class = its class's embedding + its own (zero at the start): what is learnt
    about a class is shared by its groups, and a group learns only how it differs."""

    def __init__(self, parents: list[int], dim: int):
        super().__init__()
        self.register_buffer("parents", torch.tensor(parents, dtype=torch.long), persistent=False)
        self.coarse = torch.nn.Embedding(max(parents) + 1, dim)
        self.fine = torch.nn.Embedding(len(parents), dim)
        torch.nn.init.zeros_(self.fine.weight)

    @property
    def num_embeddings(self) -> int:
        return len(self.parents)

    def forward(self, idx):
        return self.coarse(self.parents[idx]) + self.fine(idx)


def latent_share(z0: torch.Tensor) -> torch.Tensor:
    """u = Phi(z0), the standard normal CDF (ONNX: Erf)."""
    return 0.5 * (1 + torch.erf(z0 / math.sqrt(2.0)))


def place_latents(z: torch.Tensor, modes: torch.Tensor, labels: torch.Tensor, bounds: torch.Tensor,
                  offsets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """z [B, z_dim] with z[:, 0] redrawn inside the interval of group ``modes`` of class ``labels``
    (bounds [K, k - 1], offsets [K] as tensors): N(0, 1) given the group, as the exported graph reads it."""
    local = modes - offsets[labels]                                        # [B] group within its class
    edges = torch.cat([torch.zeros(len(bounds), 1, dtype=bounds.dtype), bounds.clamp(max=1.0),
                       torch.ones(len(bounds), 1, dtype=bounds.dtype)], dim=1)   # [K, k + 1]
    lo, hi = edges[labels, local], edges[labels, local + 1]
    u = lo + (hi - lo) * torch.rand(len(z), generator=generator, dtype=bounds.dtype)
    z = z.clone()
    z[:, 0] = torch.special.ndtri(u.clamp(1e-6, 1 - 1e-6)).to(z.dtype)
    return z


def modes_for(cfg, real, resumed: dict | None = None) -> tuple[torch.Tensor, list[list[float]]]:
    """The sub-class of every real image and the bounds: read back from the ``resumed`` checkpoint
    (so a resumed run keeps its groups), else found by :func:`split_modes` on the frozen ImageNet
    network's pooled features of the real images."""
    from .models import build_discriminator, disc_kwargs
    from .projected import pooled_features

    if resumed is not None and "real_modes" in resumed and len(resumed["real_modes"]) == len(real):
        return resumed["real_modes"].long(), resumed["gen_kwargs"]["mode_bounds"]
    d = build_discriminator({**disc_kwargs(cfg, len(real.classes)), "guidance": False, "pooled": True})
    feats = pooled_features(d.eval(), real.images)                                # [N, 1280]
    return split_modes(feats, real.labels, len(real.classes), cfg.subclasses, cfg.subclass_min_images, seed=cfg.seed)
