"""Checkpoints (state dict + config + labels + preprocessing contract) and the other files of a
run folder, all written atomically with ordinary file permissions.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: no arbitrary code runs when a checkpoint is opened.

A run folder (``--out``) holds: ``args.json`` (the resolved config, written before the first
epoch), ``results.csv`` (one row per epoch), ``last.pt`` (every epoch, for ``--resume``),
``best.pt`` (the checkpoint to export), ``metrics.json``, ``curves.png`` and ``confusion.png``.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from skulens import ModelError, PreprocessConfig
from skulens.internal import atomic_write, atomic_write_text, config_to_dict

from .config import TrainConfigError

RUN_FILES = ("args.json", "results.csv", "last.pt", "best.pt", "metrics.json")
RESULT_COLUMNS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr", "seconds")

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


def check_run_folder(out, resume: bool = False, exist_ok: bool = False) -> None:
    """Refuse ``out`` when it already holds a training run, unless ``resume`` (continue it from
    its last.pt) or ``exist_ok`` (overwrite it). Called before any image is decoded."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TrainConfigError(f"--out {out} exists and is not a folder")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not (resume or exist_ok):
        raise TrainConfigError(f"{out} already holds a training run ({', '.join(found)}): pass --resume to "
                               "continue it, --exist-ok to overwrite it, or choose another --out folder")


def write_args(cfg, path) -> Path:
    """``args.json``: the run's resolved config (every recipe and derived value filled in)."""
    return atomic_write_text(path, json.dumps(config_to_dict(cfg), indent=2) + "\n")


def write_results(history: list[dict], path) -> Path:
    """``results.csv``: one row per epoch. ``train_*``: the raw ("live") weights on the epoch's
    augmented batches; ``val_*``: the kept weights (the EMA when it is on); ``live_val_*``: the
    raw weights on val; losses are plain cross-entropy (no label smoothing), so they compare;
    ``lr``: the schedule's base rate at the epoch's end; ``seconds``: training time so far."""
    extra = [k for k in ("live_val_loss", "live_val_top1") if any(k in h for h in history)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*RESULT_COLUMNS, *extra], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for h in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in h.items()})
    return atomic_write_text(path, buf.getvalue())
