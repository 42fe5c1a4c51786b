"""Cross-entropy whose label smoothing stays near the label: in its coarse group.

Plain label smoothing gives every wrong class the same small target, eps / K. With coarse
labels (Grocery: 81 products in 43 groups such as "Apple" or "Milk"), part of that mass can go
to the label's own group instead:

    target = (1 - eps) * onehot(y) + eps * (share * uniform(group of y) + (1 - share) * uniform(all))

so the network learns that a Granny Smith that is not a Granny Smith is more likely another
apple than a carton of milk, and its mistakes fall inside the group more often (the coarse
top-1). A class alone in its group (or without a coarse label) keeps its share on itself.
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
