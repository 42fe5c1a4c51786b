"""Training-curve and confusion-matrix PNGs (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skulens.internal import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    plt = _plt()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


def save_curves(history: list[dict], path, best_epoch: int | None = None) -> Path:
    """Loss and top-1 per epoch, like compared with like: the raw ("live") weights on the
    augmented training batches and on val; with an EMA, also the EMA weights on val (the
    weights that are kept). A dotted line marks the epoch whose weights best.pt holds."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    ema = any("live_val_top1" in h for h in history)
    has_val = any("val_top1" in h for h in history)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, name in ((axes[0], "loss", "loss"), (axes[1], "top1", "top-1")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", ms=3, color="tab:blue",
                label="train: live weights, augmented batches" if ema else "train (augmented batches)")
        if has_val:
            live = f"live_val_{key}" if ema else f"val_{key}"
            ax.plot(epochs, [h.get(live, np.nan) for h in history], "o-", ms=3, color="tab:orange",
                    label="val: live weights" if ema else "val")
        if ema:
            ax.plot(epochs, [h.get(f"val_{key}", np.nan) for h in history], "s--", ms=3, color="tab:green",
                    label="val: EMA weights (kept)")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1.5, label=f"best.pt: epoch {best_epoch}")
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_ylim(0, 1.02)
    return _save(fig, path)


def confusion_matrix(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (target, pred), 1)
    return cm


def save_confusion(cm: np.ndarray, labels, path, split: str = "test") -> Path:
    """Rows: the true class; columns: the predicted one. Each cell shows its count of photos,
    its colour the fraction of the true class's photos (so small classes read like big ones)."""
    plt = _plt()
    n = len(labels)
    total = int(cm.sum())
    top1 = np.trace(cm) / max(total, 1)
    size = min(20, 5 + n * 0.2)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("fraction of the true class's photos")
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"confusion matrix: {split} split, n = {total} photos, top-1 {100 * top1:.1f}%")
    ticks = np.arange(n)
    cell = size * 0.75 * 72 / max(n, 1)  # a cell's side in points, roughly
    ax.set_xticks(ticks, labels, rotation=90, fontsize=min(9, max(4, 0.6 * cell)))
    ax.set_yticks(ticks, labels, fontsize=min(9, max(4, 0.6 * cell)))
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=min(9, max(3, 0.4 * cell)),
                color="white" if norm[i, j] > 0.55 else "black")
    return _save(fig, path)
