"""Weight averaging ("model soup"): one classifier whose weights are the mean of several runs'.

Runs fine-tuned from the same pretrained weights with different seeds end in one basin of the
loss, so the mean of their weights is itself a model, often a better one than each run (Wortsman
et al. 2022, "Model soups"), at the size and speed of one model. Measured here (README): on
Grocery's val split two Lite0 seeds' average gained 3.6 pp; on the test split two Lite1 seeds'
average was level with their mean. Runs trained from scratch do not share a basin and their
mean is noise, so they are refused, as are runs of another model, class set, preprocessing or
starting point.

Every floating-point tensor is averaged, BatchNorm running statistics included (recomputing
them on training photos lost the whole gain on val: README). Integer tensors (BatchNorm's
step counters) are taken from the first checkpoint. The result is a skulens checkpoint that
``skulens export`` takes like a best.pt; ``averaged_from`` (file, sha256, seed of each run)
travels into the exported model's provenance. It cannot be resumed: it has no optimizer state.

    skulens average runs/lite1_s0/best.pt runs/lite1_s1/best.pt --out runs/lite1_soup.pt

:func:`train_soup` (``skulens soup``) trains the runs too, one after another, optionally forked
from the first run's early epochs so that they share them (``--fork-at``), and averages them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

import skulens
from skulens import ModelError
from skulens.internal import atomic_write_text, sha256_file

from .checkpoint import PER_RUN, load_checkpoint, save_checkpoint  # PER_RUN: may differ without comment
from .config import AverageConfig, SoupConfig, TrainConfig, TrainConfigError, resolve

# what every ingredient must share: the same network, classes and input contract
SAME = ("model_name", "model_kwargs", "labels", "coarse_labels", "preprocess")

log = logging.getLogger(__name__)

_NO_SHARED_START = ("runs from different random starts do not share a basin and their averaged weights "
                    "are noise")  # why neither average nor soup takes runs from scratch


def start_of(ckpt: dict) -> str | None:
    """Where a run's weights started: the pretrained file's sha256, the --init-from checkpoint,
    or None (from scratch)."""
    if isinstance(ckpt.get("pretrained"), dict):
        return f"pretrained {ckpt['pretrained'].get('weights')} (sha256 {ckpt['pretrained'].get('sha256')})"
    init = (ckpt.get("train_config") or {}).get("init_from")
    return f"init-from {init}" if init else None


def average_checkpoints(ckpts: list[dict], names: list[str], sha256s: list[str] | None = None) -> dict:
    """Classifier checkpoints -> one checkpoint whose weights are their element-wise mean.
    ``names`` (and ``sha256s``, the files' hashes) identify them in errors and in ``averaged_from``."""
    if len(ckpts) < 2:
        raise TrainConfigError(f"averaging needs two or more checkpoints, got {len(ckpts)}")
    first = ckpts[0]
    for ckpt, name in zip(ckpts, names):
        if ckpt.get("kind", "classifier") != "classifier":
            raise ModelError(f"{name}: a {ckpt.get('kind')} checkpoint; only classifiers are averaged")
        weights = ckpt.get("model")
        if not isinstance(weights, dict) or not weights or not all(torch.is_tensor(t) for t in weights.values()):
            raise ModelError(f"{name}: its model weights are missing or not tensors (a damaged checkpoint)")
        if ckpt.get("averaged_from"):
            log.warning("%s is itself an average of %d runs; here it counts as one run", name,
                        len(ckpt["averaged_from"]))
        for key in SAME:
            if ckpt.get(key) != first.get(key):
                raise ModelError(f"{name}: its {key} differs from {names[0]}'s; only runs of the same model, "
                                 "classes and preprocessing can be averaged")
        if start_of(ckpt) is None:
            raise ModelError(f"{name}: trained from scratch; {_NO_SHARED_START}. Average runs fine-tuned from the "
                             "same pretrained weights (or the same --init-from checkpoint)")
        if start_of(ckpt) != start_of(first):
            raise ModelError(f"{name}: started from {start_of(ckpt)}, {names[0]} from {start_of(first)}; "
                             "only runs from the same start can be averaged")
    states = [c["model"] for c in ckpts]
    averaged = {}
    for key, ref in states[0].items():
        for sd, name in zip(states, names):
            t = sd.get(key)
            if t is None or t.shape != ref.shape or t.dtype != ref.dtype:
                raise ModelError(f"{name}: tensor {key} is missing or has another shape or type than in {names[0]}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ModelError(f"{name}: tensor {key} holds NaN or infinite values (a diverged run)")
        if ref.is_floating_point():  # [*shape]: the mean in float64, stored in the tensor's own type
            averaged[key] = torch.stack([sd[key].double() for sd in states]).mean(0).to(ref.dtype)
        else:
            averaged[key] = ref.clone()
    extra = sorted(set().union(*states) - set(states[0]))
    if extra:
        raise ModelError(f"tensors {', '.join(extra[:5])} are in some checkpoints and not in {names[0]}")
    _log_recipe_differences(ckpts, names)
    keep = ("kind", *SAME, "dataset", "pretrained", "teacher", "train_config", "precision")
    return {**{k: first.get(k) for k in keep},
            "model": averaged, "raw_model": averaged, "ema": None, "epoch": first.get("epoch"),
            "history": [], "best_top1": None,
            # a fork's train_seconds include its source's up to the fork: counted once, with the source
            "train_seconds": sum((c.get("train_seconds") or 0.0) - ((c.get("forked_from") or {}).get("train_seconds")
                                                                    or 0.0) for c in ckpts),
            "averaged_from": [{"checkpoint": name, "sha256": sha,
                               "seed": (c.get("train_config") or {}).get("seed"),
                               "forked_at": (c.get("forked_from") or {}).get("epoch"),
                               "val_top1": ((c.get("metrics") or {}).get("best_val_top1"))}
                              for c, name, sha in zip(ckpts, names, sha256s or [None] * len(ckpts))],
            "skulens_version": skulens.__version__, "torch_version": str(torch.__version__)}


def _log_recipe_differences(ckpts: list[dict], names: list[str]) -> None:
    configs = [c.get("train_config") or {} for c in ckpts]
    differ = sorted(k for k in set().union(*configs) if k not in PER_RUN and len({repr(c.get(k)) for c in configs}) > 1)
    if differ:  # allowed (the original soups mixed recipes) but worth a line: it was maybe not meant
        log.info("the runs' recipes differ in %s (kept: %s's train_config)", ", ".join(differ), names[0])


def average(cfg: AverageConfig) -> Path:
    """Average ``cfg.checkpoints`` into ``cfg.out`` (written atomically); returns its path."""
    paths = [Path(p) for p in cfg.checkpoints]
    out = Path(cfg.out)
    if any(out.resolve() == p.resolve() for p in paths):
        raise TrainConfigError(f"--out {out} is one of the checkpoints being averaged; choose another file")
    ckpts = [load_checkpoint(p) for p in paths]  # weights_only: no code runs
    shas, seen = [sha256_file(p) for p in paths], {}
    for p, sha in zip(paths, shas):
        if sha in seen:
            raise TrainConfigError(f"{p} and {seen[sha]} are the same checkpoint; averaging a run with itself "
                                   "changes nothing")
        seen[sha] = p
    soup = average_checkpoints(ckpts, [str(p) for p in paths], shas)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out, soup)
    except OSError as exc:
        raise TrainConfigError(f"--out {out}: cannot be written ({exc.strerror or exc})") from exc
    log.info("averaged %d checkpoints (%s) -> %s", len(paths), ", ".join(map(str, paths)), out)
    return out


def train_soup(cfg: TrainConfig, soup: SoupConfig) -> dict:
    """Train ``soup.members`` runs of ``cfg`` into ``cfg.out``/seedS (S = cfg.seed, cfg.seed + 1,
    ...), the later ones forked from the first run's epoch ``soup.fork_at`` when it is set, and
    average their best.pt into ``cfg.out``/soup.pt. Re-running it continues: finished runs are
    kept, interrupted ones resumed. Returns the summary also written to ``cfg.out``/soup.json."""
    from .trainer import train

    resolved = resolve(cfg)
    epochs = resolved.epochs
    if not (resolved.pretrained or cfg.init_from):  # refused by average_checkpoints, so before the training
        raise TrainConfigError(f"{resolved.model} from scratch: {_NO_SHARED_START}; a soup needs runs from one "
                               "start (pretrained weights or --init-from)")
    if soup.fork_at >= epochs:
        raise TrainConfigError(f"fork_at={soup.fork_at} leaves none of the {epochs} epochs to the forks; "
                               f"choose fewer (e.g. {epochs // 2})")
    if cfg.fork_from or cfg.resume:
        raise TrainConfigError("a soup sets --fork-from and --resume for its runs itself; leave them out")
    out = Path(cfg.out)
    members, first = [], out / f"seed{cfg.seed}"
    for i in range(soup.members):
        run = out / f"seed{cfg.seed + i}"
        member = dataclasses.replace(cfg, out=str(run), seed=cfg.seed + i, resume=(run / "last.pt").is_file())
        if i == 0 and soup.fork_at:
            member = dataclasses.replace(member, snapshot_every=soup.fork_at)
        elif soup.fork_at:
            member = dataclasses.replace(member, fork_from=str(first / f"epoch{soup.fork_at:03d}.pt"))
        if (run / "metrics.json").is_file():
            log.info("soup member %d/%d (%s): trained already, kept", i + 1, soup.members, run)
            metrics = json.loads((run / "metrics.json").read_text())
        else:
            log.info("soup member %d/%d: %s%s", i + 1, soup.members, run,
                     f" (forked from epoch {soup.fork_at})" if member.fork_from else "")
            metrics = train(member)
        members.append({"run": str(run), "seed": member.seed, "forked_at": soup.fork_at if member.fork_from else None,
                        "train_seconds": metrics.get("train_seconds"), "cpu_seconds": metrics.get("cpu_seconds"),
                        "eval": {k: v for k, v in (metrics.get("eval") or {}).items() if k != "per_class"}})
    path = average(AverageConfig(checkpoints=tuple(m["run"] + "/best.pt" for m in members), out=str(out / "soup.pt")))
    summary = {"soup": str(path), "members": members, "fork_at": soup.fork_at, "epochs": epochs,
               "runs_of_training": 1 + (soup.members - 1) * (1 - soup.fork_at / epochs),
               "cpu_seconds": sum(m["cpu_seconds"] or 0.0 for m in members)}
    atomic_write_text(out / "soup.json", json.dumps(summary, indent=2))
    return summary
