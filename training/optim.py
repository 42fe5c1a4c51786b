"""The optimiser and learning-rate schedule of ``skulens train``: parameter groups with weight
decay on weights only, layer-wise learning-rate decay and a faster head; SGD-Nesterov or AdamW;
linear warm-up then cosine to 0."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """Weight decay on weights only (not biases / BatchNorm); learning rate x ``layer_decay``^d
    for layer groups d steps from the output (models that list ``param_groups_by_depth``), and
    x ``head_lr_mult`` for the classifier."""
    head = {id(p) for p in model.head.parameters()} if isinstance(getattr(model, "head", None), nn.Module) else set()
    if hasattr(model, "param_groups_by_depth") and cfg.layer_decay != 1.0:
        depth_groups = model.param_groups_by_depth()
    else:
        depth_groups = [[p for p in model.parameters() if id(p) not in head], [p for p in model.parameters() if id(p) in head]]
    groups = []
    for d, params in enumerate(depth_groups):
        scale = cfg.layer_decay ** (len(depth_groups) - 1 - d)
        for decay in (True, False):
            ps = [p for p in params if (p.ndim > 1) == decay]
            if ps:
                mult = cfg.head_lr_mult if all(id(p) in head for p in ps) else scale
                groups.append({"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * mult})
    return groups


def make_optimizer(model, cfg: TrainConfig):
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd or adamw)")


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then a cosine down to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def make_schedule(optimizer, warmup_steps: int, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup_steps, total_steps))
