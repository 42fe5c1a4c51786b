"""Training-curve and confusion-matrix PNGs (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_curves(history: list[dict], path) -> Path:
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    if any("val_loss" in h for h in history):
        ax1.plot(epochs, [h.get("val_loss", np.nan) for h in history], label="val")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(epochs, [h["train_top1"] for h in history], label="train")
    ax2.plot(epochs, [h.get("val_top1", np.nan) for h in history], label="val")
    ax2.set(xlabel="epoch", ylabel="top-1", title="accuracy", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def confusion_matrix(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (target, pred), 1)
    return cm


def save_confusion(cm: np.ndarray, labels, path) -> Path:
    plt = _plt()
    n = len(labels)
    size = min(20, 4 + n * 0.18)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (row-normalised)")
    ticks = np.arange(n)
    fs = max(3, min(9, 300 // max(n, 1)))
    ax.set_xticks(ticks, labels, rotation=90, fontsize=fs)
    ax.set_yticks(ticks, labels, fontsize=fs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
