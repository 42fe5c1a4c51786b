"""Test-time augmentation inside the exported graph: the model sees each image and its mirror
image, and its outputs are their mean.

    features  [N, F] = (features(x) + features(flip(x))) / 2
    logits    [N, K] = head(features) = (logits(x) + logits(flip(x))) / 2   (the head is linear)
    embedding [N, D] = normalize(features)                                    (see export._embedding)

The flip is a batch of 2N through the same network, so it costs about twice the compute, and
every runtime that reads the file (the SDK, OpenVINO, Triton, Ray workers) gets it without
knowing. It pays for a model trained with horizontal flips (the default augmentation): its two
views make partly independent errors. Features (hence logits) are averaged rather than
probabilities so that the graph ends in the head as before (no Softmax/Log whose output INT8
would coarsen).
"""
from __future__ import annotations

import torch
from torch import nn

from skulens.training.models import within

from .config import TTA_CHOICES


class FlipTTA(nn.Module):
    """A classifier whose pooled features are the mean of the wrapped model's features for the
    image and for its mirror image. The head is linear, so the logits are the mean of the two
    views' logits, and the last node of the graph is still the head's Gemm (float logits, see
    export._quantize). Declares ``features``/``head`` like every registered model, so the
    embedding output is built on the averaged features, and carries the model's card (paths
    inside the wrapper) for the uint8-input fold."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model
        if getattr(model, "card", None) is not None:
            self.card = within(model.card, "inner")

    @property
    def head(self) -> nn.Module:
        return self.inner.head

    def features(self, x):  # x [N, C, H, W] -> [N, F]
        f = self.inner.features(torch.cat([x, x.flip(3)]))  # [2N, F]: the images, then their mirrors
        # N read from f, not from x: a second consumer of the pixels would block the uint8 input
        n = f.shape[0] // 2
        return (f[:n] + f[n:]) * 0.5

    def forward(self, x):  # x [N, C, H, W] -> logits [N, K]
        return self.head(self.features(x))


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """``model`` with the test-time augmentation ``tta`` ("none": unchanged)."""
    if tta not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {TTA_CHOICES}, got {tta!r}")
    return model if tta == "none" else FlipTTA(model).eval()
