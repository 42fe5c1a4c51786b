"""Cross-entropy whose label smoothing stays near the label: in its coarse group.

Plain label smoothing gives every wrong class the same small target, eps / K. With coarse
labels (Grocery: 81 products in 43 groups such as "Apple" or "Milk"), part of that mass can go
to the label's own group instead:

    target = (1 - eps) * onehot(y) + eps * (share * uniform(group of y) + (1 - share) * uniform(all))

so the network learns that a Granny Smith that is not a Granny Smith is more likely another
apple than a carton of milk, and its mistakes fall inside the group more often (the coarse
top-1). A class alone in its group (or without a coarse label) keeps its share on itself.

Also here, the batch-level regulariser the loss is paired with: :func:`cutmix_or_mixup`
(``--mix-prob``), whose mixed batch is scored as ``lam * CE(y) + (1 - lam) * CE(y_b)``.
"""
from __future__ import annotations

import torch
from torch import nn


def group_smoothed_targets(group_of: list[int], eps: float, share: float) -> torch.Tensor:
    """[K, K] soft targets, row y for label y; ``group_of[k]`` is class k's coarse group (-1: none)."""
    k = len(group_of)
    g = torch.tensor(group_of)
    same = (g[:, None] == g[None, :]) & (g[:, None] >= 0)
    same |= torch.eye(k, dtype=torch.bool)                       # [K, K]: y's group, y included
    within = same.float() / same.sum(1, keepdim=True)
    return (1 - eps) * torch.eye(k) + eps * (share * within + (1 - share) / k)


class GroupSmoothedCrossEntropy(nn.Module):
    """Cross-entropy against :func:`group_smoothed_targets` (share 0: plain label smoothing)."""

    def __init__(self, group_of: list[int], eps: float, share: float):
        super().__init__()
        if not 0 <= share <= 1 or not 0 <= eps < 1:
            raise ValueError(f"need 0 <= share <= 1 and 0 <= eps < 1, got share={share}, eps={eps}")
        self.register_buffer("targets", group_smoothed_targets(group_of, eps, share))

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # [B, K], [B] -> []
        return -(self.targets[y] * logits.log_softmax(1)).sum(1).mean()


def cutmix_or_mixup(x, y, prob: float, gen: torch.Generator):
    """With probability ``prob``: CutMix (a random box from a shuffled batch) or MixUp (a blend),
    half the time each; returns (x, y_b, lam) for loss = lam*CE(y) + (1-lam)*CE(y_b)."""
    if prob <= 0 or torch.rand(1, generator=gen).item() >= prob:
        return x, y, 1.0
    perm = torch.randperm(len(x), generator=gen)
    lam = torch.rand(1, generator=gen).item()  # Beta(1, 1)
    if torch.rand(1, generator=gen).item() < 0.5:  # MixUp
        return lam * x + (1 - lam) * x[perm], y[perm], lam
    h, w = x.shape[2:]
    ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = torch.randint(h, (1,), generator=gen).item(), torch.randint(w, (1,), generator=gen).item()
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    return x, y[perm], 1 - (y1 - y0) * (x1 - x0) / (h * w)
