"""The classifier's second output: an L2-normalised embedding for gallery retrieval.

Every registered model declares ``features(x) -> [N, F]`` (the pooled features) and ``head``
(the linear classifier on them). The exported graph computes the features once and returns

    logits    [N, num_classes] = head(features)
    embedding [N, D]           = normalize(features)                    (D = F, "pooled")
                                 normalize((features - mean) @ P)       (D < F, "pca")
                                 normalize((normalize(features) - mean) @ W)   (D = F, "wccn")
    with a colour weight w > 0:  normalize([that, w * colour(x)])       (D + 48, "colour" in the spec)

where ``P`` [F, D] holds the top principal directions of the training images' features (fitted
at export, a linear map learned from the training data; it shrinks galleries F / D times and
makes the exact search F / D times cheaper), and ``colour`` is export._colour's hue x
saturation histogram of the input image. Cosine similarity of two embeddings is then their
inner product.

``W`` [F, F] whitens the *within-product* variation (WCCN, within-class covariance
normalisation, as in speaker and face verification): fitted at export on the labelled training
images' unit features, ``W = V diag(1 / sqrt(w + shrinkage * mean(w)))`` from the eigenvectors
``V`` and eigenvalues ``w`` of the pooled within-class covariance. The directions in which photos
of one product differ (light, angle, shelf) are scaled down, so products the model never saw are
told apart by what differs between products; ``shrinkage`` keeps the rarely seen directions
from being blown up (README: chosen on the validation split's new products).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from skulens import ModelError, PreprocessConfig
from skulens.training.models import within

from ._colour import ColourHistogram

EMBEDDING_OUTPUT = "embedding"
log = logging.getLogger(__name__)


def embedding_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot give an embedding output, or None when it can."""
    if not callable(getattr(model, "features", None)) or not isinstance(getattr(model, "head", None), nn.Linear):
        return f"{type(model).__name__} declares no features() and linear head"
    return None


class WithEmbedding(nn.Module):
    """model -> (logits, embedding); carries the model's card (paths inside the wrapper) for the uint8-input fold."""

    def __init__(self, model: nn.Module, mean: torch.Tensor | None = None, components: torch.Tensor | None = None,
                 colour: ColourHistogram | None = None, colour_weight: float = 0.0, unit_first: bool = False):
        super().__init__()
        self.colour, self.colour_weight, self.unit_first = colour, float(colour_weight), unit_first
        self.model = model
        if getattr(model, "card", None) is not None:  # the model's facts, at their paths inside the wrapper
            self.card = within(model.card, "model")
        self.project = None
        if components is not None:  # (f - mean) @ P as one Linear: weight P^T, bias -mean @ P
            self.project = nn.Linear(components.shape[0], components.shape[1])
            with torch.no_grad():
                self.project.weight.copy_(components.T)
                self.project.bias.copy_(-(mean @ components))
            self.project.requires_grad_(False)

    def forward(self, x):  # [N, C, H, W] -> logits [N, K], embedding [N, D]
        f = self.model.features(x)                                          # [N, F]
        p = _l2(f) if self.unit_first else f
        e = _l2(self.project(p) if self.project is not None else p)        # [N, D]
        if self.colour is not None:                                         # [N, D + colour.dim]
            e = _l2(torch.cat([e, self.colour_weight * self.colour(x)], dim=1))
        return self.model.head(f), e


def _l2(e):
    # e / max(|e|, eps) with a broadcasting Div (F.normalize's expand_as would read the input's
    # shape, a second consumer of the pixels that blocks the INT8 input rewrite)
    return e / torch.linalg.vector_norm(e, dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def _features(model: nn.Module, tensors: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([model.eval().features(tensors[i:i + batch]) for i in range(0, len(tensors), batch)]).double()


def fit_pca(model: nn.Module, tensors: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mean [F], components [F, dim] of the features of ``tensors`` and the variance share kept."""
    feats = _features(model, tensors)
    if dim >= feats.shape[1]:
        raise ModelError(f"embedding_dim {dim} must be smaller than the model's {feats.shape[1]} features")
    if dim > len(feats):
        raise ModelError(f"embedding_dim {dim} needs at least {dim} training images to fit, got {len(feats)}")
    mean = feats.mean(0)
    _, s, vh = torch.linalg.svd(feats - mean, full_matrices=False)
    var = s ** 2
    return mean.float(), vh[:dim].T.contiguous().float(), float(var[:dim].sum() / var.sum())


def fit_wccn(model: nn.Module, tensors: torch.Tensor, labels, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean [F] and whitening map W [F, F] of the within-class covariance of the unit features of
    ``tensors`` (see the module docstring), and the number of classes with two or more images."""
    f = _l2(_features(model, tensors))                                      # [N, F] unit features
    y = torch.as_tensor(np.asarray(labels))
    centred, classes = [], 0
    for c in torch.unique(y):
        fc = f[y == c]
        if len(fc) > 1:
            centred.append(fc - fc.mean(0))
            classes += 1
    if classes < 2:
        raise ModelError("embedding_whiten needs at least two classes with two or more training images")
    z = torch.cat(centred)
    cov = z.T @ z / len(z)                                                  # [F, F] pooled within-class
    w, v = torch.linalg.eigh(cov)
    w = w.clamp_min(0)
    whiten = v / torch.sqrt(w + shrinkage * w.mean()).clamp_min(1e-12)     # [F, F]
    return f.mean(0).float(), whiten.float(), classes


def with_embedding(model: nn.Module, embedding_dim: int, train_tensors: torch.Tensor | None,
                   pre: PreprocessConfig, colour_weight: float = 0.0, whiten: float = 0.0,
                   train_labels=None) -> tuple[nn.Module, dict]:
    """``model`` wrapped to also output its embedding, and the embedding's metadata. The colour
    histogram is added where ``colour_weight`` > 0 and the contract has 3 colour channels; with
    ``whiten`` > 0 the features are whitened within products (WCCN, that shrinkage) on
    ``train_tensors`` and their ``train_labels``."""
    problem = embedding_problem(model)
    if problem:
        raise ModelError(f"no embedding output possible: {problem}")
    spec = {"output": EMBEDDING_OUTPUT, "normalized": "l2", "metric": "cosine",
            "features": int(model.head.in_features)}
    mean = comps = None
    if (embedding_dim or whiten) and train_tensors is None:
        raise ModelError("a projected or whitened embedding is fitted on the training images; pass --data")
    if whiten:  # (ExportConfig refuses it together with embedding_dim)
        mean, comps, classes = fit_wccn(model, train_tensors, train_labels, whiten)
        spec.update(dim=int(model.head.in_features), source="wccn", wccn_images=len(train_tensors),
                    wccn_classes=classes, wccn_shrinkage=float(whiten))
    elif not embedding_dim:
        spec.update(dim=int(model.head.in_features), source="pooled")
    else:
        mean, comps, kept = fit_pca(model, train_tensors, embedding_dim)
        spec.update(dim=int(embedding_dim), source="pca", pca_images=len(train_tensors),
                    pca_variance_kept=round(kept, 4))
    colour = None
    if colour_weight > 0 and (pre.channels != 3 or pre.color_order not in ("RGB", "BGR")):
        log.warning("no colour histogram in the embedding: the model reads %d-channel %s images, not colour",
                    pre.channels, pre.color_order)
    elif colour_weight > 0:
        colour = ColourHistogram(pre.mean, pre.std, pre.color_order)
        spec.update(dim=spec["dim"] + colour.dim, colour={"hue_bins": colour.hue_bins, "sat_bins": colour.sat_bins,
                                                          "pool": colour.pool, "weight": float(colour_weight)})
    return WithEmbedding(model, mean, comps, colour, colour_weight, unit_first=bool(whiten)).eval(), spec


def embedding_parity(wrapped: nn.Module, onnx_path, inputs: np.ndarray, onnx_inputs: np.ndarray) -> float:
    """Max |torch - onnxruntime| over the embedding for the same images."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = wrapped.eval()(torch.from_numpy(inputs))[1].numpy()
    got = sess.run([EMBEDDING_OUTPUT], {sess.get_inputs()[0].name: onnx_inputs})[0]
    return float(np.abs(ref - got).max())
