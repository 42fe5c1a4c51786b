"""Checkpoints (state dict + config + labels + preprocessing contract) and the other files of a
run folder, all written atomically with ordinary file permissions.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: no arbitrary code runs when a checkpoint is opened.

A run folder (``--out``) holds: ``args.json`` (the resolved config, written before the first
epoch), ``results.csv`` (one row per epoch), ``last.pt`` (every epoch, for ``--resume``),
``best.pt`` (the checkpoint to export), ``metrics.json``, ``curves.png`` and ``confusion.png``,
and with ``--snapshot-every N`` an ``epochNNN.pt`` every N epochs (last.pt as it was then).

``--resume`` is exact: a run killed at any moment and resumed from its last.pt ends with the
weights of the uninterrupted run, bit for bit (on the same machine, torch and thread count).
Besides weights, EMA, optimizer and schedule, a checkpoint holds every random-number state a
training step draws from (:func:`rng_states`); augmentation needs none, being a pure function of
(seed, epoch, image index) (``data.TrainSet``), nor do the teacher's views and the GAN pools,
computed before training from the seed. ``--fork-from`` is the other way to continue a run: it
loads the same states but the random-number ones, so the branch draws from its own seed.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from skulens import ModelError, PreprocessConfig
from skulens.internal import atomic_write, atomic_write_text, config_to_dict

from .config import TrainConfigError

RUN_FILES = ("args.json", "results.csv", "last.pt", "best.pt", "metrics.json")
WRITTEN_FILES = (*RUN_FILES, "curves.png", "confusion.png")
RESULT_COLUMNS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr", "seconds")

FORMAT = "skulens-checkpoint-1"
# TrainConfig fields that belong to one run, not to its recipe: its seed, where and how it runs,
# its snapshots and the run it forked from. Averaged runs and forks may differ in these (and a
# fork in "data" as spelt: the dataset is compared by resolved path)
PER_RUN = ("seed", "out", "resume", "exist_ok", "threads", "num_workers", "device", "fork_from", "snapshot_every")
FORK_MAY_DIFFER = (*PER_RUN, "data")

log = logging.getLogger(__name__)


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


def init_from_checkpoint(model, path) -> None:
    """Copy every tensor whose name and shape match, except the classifier the model's card names
    (it is new for the new classes, even where their number is the same)."""
    src = load_checkpoint(path)["model"]
    own = model.state_dict()
    head = model.card.classifier + "."
    matched = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape and not k.startswith(head)}
    model.load_state_dict(matched, strict=False)
    log.info("init-from %s: %d/%d tensors copied", path, len(matched), len(own))


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


def rng_states(device: torch.device, **generators: torch.Generator) -> dict:
    """The random-number states of a training run, as tensors and primitives (so checkpoints
    still load with ``weights_only=True``): torch's global CPU generator (dropout, stochastic
    depth; under torchrun also the loader's worker seeds), the CUDA generators when training on
    a GPU, numpy's and Python's global generators (skulens draws from neither, a custom model
    or hook may), and the run's own ``generators`` (CutMix/MixUp, ...) by name."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate(),
            "generators": {name: g.get_state() for name, g in generators.items()}}


def restore_rng_states(states: dict | None, device: torch.device, **generators: torch.Generator) -> bool:
    """Set the states :func:`rng_states` saved; returns whether all were there (a checkpoint
    written before they were saved, or on another device, resumes with fresh ones: the run
    continues, but not as the uninterrupted run would have). Under torchrun every process
    restores rank 0's states: all start from the same seed and draw alike (same-sized shares)."""
    missing = [] if states else ["all"]
    states = states or {}
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if device.type == "cuda":
        if len(states.get("cuda") or []) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        else:
            missing.append("cuda")
    if "numpy" in states:
        n = states["numpy"]
        np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "python" in states:
        random.setstate(states["python"])
    for name, g in generators.items():
        if name in states.get("generators", {}):
            g.set_state(states["generators"][name])
        elif states:
            missing.append(name)
    return not missing


def resume_training(path, model_name: str, labels: list[str], model, ema, optimizer, scheduler,
                    device: torch.device, loader_gen: torch.Generator, **generators: torch.Generator) -> dict:
    """Load ``path`` (a last.pt) into the run's model, EMA, optimizer, schedule and random-number
    generators (the loader's, ``generators`` and the global ones); returns the checkpoint."""
    ckpt = load_checkpoint(path)
    if ckpt["model_name"] != model_name or ckpt["labels"] != labels:
        raise TrainConfigError(f"{path} was trained with another model or class set; use a new --out folder")
    model.load_state_dict(ckpt["raw_model"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    loader_gen.set_state(ckpt["loader_rng"])
    if not restore_rng_states(ckpt.get("rng"), device, **generators):
        log.warning("%s holds no (or not all) random-number states (written by an older skulens, or on another "
                    "device): the resume is not exact; the run continues but will not end with the weights "
                    "an uninterrupted run would have", path)
    return ckpt


def fork_training(path, cfg, dataset_path: str, labels: list[str], model, ema, optimizer, scheduler) -> dict:
    """Load ``path`` (another run's epochNNN.pt or last.pt) into this run's model, EMA, optimizer and
    schedule, but not its random-number states: the fork continues the same schedule from that
    epoch with its own seed's data order and augmentation. Refuses a checkpoint of another recipe
    (any TrainConfig field but FORK_MAY_DIFFER), dataset or class set, or one with no epochs left."""
    ckpt = load_checkpoint(path)
    if ckpt.get("kind", "classifier") != "classifier" or "optimizer" not in ckpt or "raw_model" not in ckpt:
        raise TrainConfigError(f"--fork-from {path}: not a training run's snapshot (epochNNN.pt or last.pt)")
    ours, theirs = config_to_dict(cfg), ckpt.get("train_config") or {}
    differ = sorted(k for k in ours if k not in FORK_MAY_DIFFER and ours[k] != theirs.get(k))
    if ckpt["model_name"] != cfg.model or ckpt["labels"] != labels:
        differ.insert(0, "model or class set")
    if ckpt.get("dataset") != str(Path(dataset_path).resolve()):
        differ.insert(0, f"dataset ({ckpt.get('dataset')})")
    if differ:
        raise TrainConfigError(f"--fork-from {path}: that run was trained with another recipe; it differs in "
                               f"{', '.join(differ)}. A fork takes the same settings, with another --seed")
    if ckpt["epoch"] + 1 >= cfg.epochs:
        raise TrainConfigError(f"--fork-from {path}: it holds epoch {ckpt['epoch'] + 1} of {cfg.epochs}, so no "
                               "epoch is left to train; fork from an earlier snapshot (--snapshot-every)")
    if theirs.get("seed") == cfg.seed:
        log.warning("--fork-from %s with the seed it was trained with (%d): the fork's augmentation repeats "
                    "that run's; pass another --seed", path, cfg.seed)
    model.load_state_dict(ckpt["raw_model"])
    if ema is not None:
        ema.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    return ckpt


def remove_partial_writes(out) -> list[Path]:
    """Delete the temp files (atomic_write's ``.NAME.*.tmp``) of run-file writes that a killed
    run cut short: the run taking over the folder (new, --resume or --exist-ok) is its one writer."""
    out = Path(out)
    names = (*WRITTEN_FILES, "epoch[0-9]*.pt")
    stale = sorted(p for name in names for p in out.glob(f".{name}.*.tmp")) if out.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temp file(s) of writes an earlier run did not finish: %s", len(stale),
                 ", ".join(p.name for p in stale))
    return stale


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
