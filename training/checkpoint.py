"""Checkpoints: state dict + config + labels + preprocessing contract, written atomically.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: no arbitrary code runs when a checkpoint is opened.
"""
from __future__ import annotations

from pathlib import Path

import torch

from skulens import ModelError, PreprocessConfig
from skulens.internal import atomic_write

FORMAT = "skulens-checkpoint-1"


def save_checkpoint(path, state: dict) -> Path:
    state = {"format": FORMAT, **state}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable skulens checkpoint ({str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelError(f"{path}: not a skulens checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__})")
    return ckpt


def model_from_checkpoint(ckpt: dict):
    """Rebuild the model of a classifier checkpoint, weights loaded, in eval mode."""
    from .models import create_model

    if ckpt.get("kind", "classifier") != "classifier":
        raise ModelError(f"checkpoint is a {ckpt.get('kind')} checkpoint, not a classifier")
    model = create_model(ckpt["model_name"], num_classes=len(ckpt["labels"]), **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def preprocess_of(ckpt: dict) -> PreprocessConfig:
    return PreprocessConfig.from_dict(ckpt["preprocess"])
