"""Data-parallel training (``torchrun --nproc-per-node N -m training ...``), kept apart from the
trainer: it calls the few hooks below, which do nothing in an ordinary single-process run.

Under torchrun the global batch ``batch_size`` is split evenly over the processes, a
DistributedSampler (seeded with the run's seed, reshuffled per epoch) gives each process its
share of every global batch, gradients are averaged by DistributedDataParallel, BatchNorm
statistics are computed over the global batch (SyncBatchNorm on GPU, ``CPUSyncBatchNorm`` with
gloo on CPU), and the epoch's loss/accuracy sums are all-reduced. Hence N processes follow the
same trajectory as one process for the same seed and global batch size (up to floating-point
summation order), except for dropout masks, which each process draws from its own RNG. Only
rank 0 writes checkpoints, metrics and plots, and logs.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    if dist.is_available() and dist.is_initialized():
        return DistContext(True, dist.get_rank(), dist.get_world_size())
    return DistContext()


def init_from_env(backend: str = "gloo") -> DistContext:
    """Join the process group that torchrun describes in the environment (no-op without it)."""
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return context()
    if backend != "gloo":
        raise ValueError(f"backend {backend!r}: the skulens trainer runs on CPU, where DDP uses 'gloo'")
    dist.init_process_group(backend=backend)
    return context()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def loader_kwargs(loader_kw: dict, dataset, d: DistContext, seed: int) -> dict:
    """Per-process DataLoader arguments: a 1/N share of each global batch via a DistributedSampler."""
    if not d.enabled:
        return loader_kw
    if loader_kw["batch_size"] % d.world_size:
        raise ValueError(f"batch_size {loader_kw['batch_size']} (the global batch) must be divisible by "
                         f"the {d.world_size} processes")
    kw = {k: v for k, v in loader_kw.items() if k not in ("shuffle", "generator")}
    kw["batch_size"] = loader_kw["batch_size"] // d.world_size
    kw["sampler"] = DistributedSampler(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True,
                                       seed=seed, drop_last=False)
    return kw


def set_epoch(loader_kw: dict, epoch: int) -> None:
    sampler = loader_kw.get("sampler")
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def wrap(model: nn.Module, d: DistContext, freeze_backbone: int = 0) -> nn.Module:
    """Global-batch BatchNorm (in place) and a DistributedDataParallel wrapper; call before the
    optimizer is built. Returns ``model`` itself in a single-process run."""
    if not d.enabled:
        return model
    if freeze_backbone:
        raise ValueError("freeze_backbone is not supported with torchrun (DDP needs a fixed set of "
                         "trained parameters)")
    if d.world_size > 1:
        _convert_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model)


def all_reduce_sums(d: DistContext, *values: float) -> tuple[float, ...]:
    """Sum per-process Python numbers over all processes (epoch loss/accuracy sums)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return tuple(t.tolist())


def _convert_batchnorm(model: nn.Module) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d and child.affine:
                new = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats)
                new.load_state_dict(child.state_dict())
                setattr(parent, name, new)


class _SyncBN(torch.autograd.Function):
    """BatchNorm over the global batch: per-channel sums all-reduced in forward and backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        c = x.shape[1]
        stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)),
                           x.new_tensor([x.numel() // c])]).double()
        dist.all_reduce(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        invstd = (var + eps).rsqrt()
        xhat = (x - mean.to(x.dtype)[None, :, None, None]) * invstd.to(x.dtype)[None, :, None, None]
        ctx.save_for_backward(xhat, weight, invstd.to(x.dtype))
        return xhat * weight[None, :, None, None] + bias[None, :, None, None], mean.float(), var.float(), n.float()

    @staticmethod
    def backward(ctx, gy, _gm, _gv, _gn):
        xhat, weight, invstd = ctx.saved_tensors
        c = xhat.shape[1]
        g_xhat = gy * weight[None, :, None, None]
        sums = torch.cat([g_xhat.sum((0, 2, 3)), (g_xhat * xhat).sum((0, 2, 3)),
                          xhat.new_tensor([xhat.numel() // c])]).double()
        dist.all_reduce(sums)
        n = sums[-1]
        mean_g, mean_gx = (sums[:c] / n).to(gy.dtype), (sums[c:2 * c] / n).to(gy.dtype)
        gx = (g_xhat - mean_g[None, :, None, None] - xhat * mean_gx[None, :, None, None]) * invstd[None, :, None, None]
        return gx, (gy * xhat).sum((0, 2, 3)), gy.sum((0, 2, 3)), None


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span every process (gloo all-reduce; works on
    CPU, unlike torch.nn.SyncBatchNorm). Same parameters and buffers as BatchNorm2d, so
    checkpoints and BatchNorm folding at export are unchanged. Eval mode is plain BatchNorm."""

    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return super().forward(x)
        y, mean, var, n = _SyncBN.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                n = float(n)
                self.running_var.mul_(1 - m).add_(var * (n / max(n - 1, 1)), alpha=m)
        return y
