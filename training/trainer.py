"""Training a product classifier, top to bottom.

    cfg = TrainConfig(data="path/to/dataset", model="edge_resnet_patch", epochs=60)
    result = train(cfg)          # writes best.pt, last.pt, metrics.json, PNGs under cfg.out

Pipeline: load dataset -> decode + cache images -> model from the registry -> SGD/AdamW with
warm-up + cosine -> per epoch: train (augment -> preprocessing contract -> model), validate,
checkpoint atomically (last.pt every epoch; best.pt, the one to deploy: the last epoch, or
with ``select="val"`` the best val top-1) -> final test evaluation of best.pt, plots.

Why "last" by default: at the end of a cosine schedule the EMA weights are the model, while a
small validation split picks noise (Grocery's val has 296 photos of 60 of the 81 classes: on
two seeds of edge_resnet_patch the best-val epoch was 1.4 and 2.4 pp worse on test).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm as _tqdm

import skulens
from skulens import DatasetError, load_dataset
from skulens.internal import accuracy_report
from skulens.internal import atomic_write

from . import _distributed as _ddp
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, make_preprocess, resolve
from .data import TrainSet, eval_tensors, load_images
from .distill import Teacher, distill_loss
from .models import create_model, preprocess_facts
from .plots import confusion_matrix, save_confusion, save_curves

log = logging.getLogger(__name__)

def tqdm(*args, **kwargs):
    """Progress bars on a terminal only (``disable=None``), so CI logs stay readable."""
    return _tqdm(*args, disable=None, **kwargs)


def _splits(dataset):
    train = dataset.split("train")
    if dataset.splits.get("val"):
        return train, dataset.splits["val"]
    # No val split: hold out every 10th image of each class (deterministic).
    seen: dict[int, int] = {}
    keep, val = [], []
    for s in train:
        seen[s.label] = seen.get(s.label, 0) + 1
        (val if seen[s.label] % 10 == 0 else keep).append(s)
    return keep, val


def _param_groups(model, cfg: TrainConfig) -> list[dict]:
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


def _bf16(precision: str) -> bool:
    """Whether to autocast to bfloat16: asked for, or "auto" on a CPU with bf16 instructions."""
    if precision == "bf16":
        return True
    if precision == "auto":
        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool((check and check()) or (amx and amx()))
    return False


def _optimizer(model, cfg: TrainConfig):
    groups = _param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd or adamw)")


def _schedule(optimizer, warmup_steps: int, total_steps: int):
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _init_from(model, path) -> None:
    """Copy every tensor whose name and shape match, except the classifier the model's card names
    (it is new for the new classes, even where their number is the same)."""
    src = load_checkpoint(path)["model"]
    own = model.state_dict()
    head = model.card.classifier + "."
    matched = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape and not k.startswith(head)}
    model.load_state_dict(matched, strict=False)
    log.info("init-from %s: %d/%d tensors copied", path, len(matched), len(own))


def _mix(x, y, prob: float, gen: torch.Generator):
    """With probability ``prob``: CutMix (a random box from a shuffled batch) or MixUp (a blend),
    half the time each; returns (x, y_b, lam) for loss = lam*CE(y) + (1-lam)*CE(y_b)."""
    if prob <= 0 or torch.rand(1, generator=gen).item() >= prob:
        return x, y, 1.0
    perm = torch.randperm(len(x), generator=gen)
    lam = torch.rand(1, generator=gen).item()  # Beta(1, 1)
    if torch.rand(1, generator=gen).item() < 0.5:  # MixUp
        return lam * x + (1 - lam) * x[perm], y[perm], lam
    h, w = x.shape[2:]
    ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = torch.randint(h, (1,), generator=gen).item(), torch.randint(w, (1,), generator=gen).item()
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    return x, y[perm], 1 - (y1 - y0) * (x1 - x0) / (h * w)


@torch.no_grad()
def predict_logits(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size].contiguous(memory_format=torch.channels_last))
                      for i in range(0, len(x), batch_size)])


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (loader workers): on a shared
    machine, cpu_seconds / cores bounds what the run would take with the cores to itself."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def train(cfg: TrainConfig) -> dict:
    """Train per ``cfg``; returns the final metrics dict (also written to ``out/metrics.json``)."""
    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    cfg = resolve(cfg)  # model, pretrained and the recipe's defaults filled in
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # -- data ------------------------------------------------------------------------------------
    dataset = load_dataset(cfg.data)
    labels = dataset.classes
    train_samples, val_samples = _splits(dataset)
    if not train_samples:
        raise DatasetError(f"{cfg.data}: no training images")
    pre = make_preprocess(cfg, preprocess_facts(cfg.model))  # the contract: evaluation and export
    train_pre = dataclasses.replace(pre, input_size=(cfg.train_size, cfg.train_size))
    teacher = Teacher.from_checkpoint(cfg.teacher, labels) if cfg.teacher else None
    if teacher is not None and cfg.mix_prob > 0:
        raise ValueError("distillation (--teacher) and CutMix/MixUp (--mix-prob) do not combine")
    log.info("dataset %s; model %s (%s recipe)", dataset.summary(), cfg.model, cfg.recipe)
    with tqdm(total=len(train_samples) + len(val_samples), desc="decode", unit="img", leave=False) as bar:
        cache = cfg.cache_size or 2 * max(cfg.input_size, teacher.input_size if teacher else 0)
        images = load_images(train_samples, cache, progress=bar.update)
        x_val = eval_tensors(val_samples, pre, progress=bar.update)
    y_val = torch.tensor([s.label for s in val_samples])
    extra = None
    if cfg.gan_augment:  # synthetic images from an exported generator (training/gan/augment_hook.py)
        from .gan.augment_hook import GanAugment
        extra = GanAugment(cfg.gan_augment, labels, [s.label for s in train_samples], cfg.gan_augment_ratio, cfg.seed)
    train_set = TrainSet(images, [s.label for s in train_samples], train_pre, cfg.augment, seed=cfg.seed, extra=extra)
    if teacher is not None:  # the teacher's logits for a fixed set of augmented views (inference: bf16 where native)
        train_set = teacher.prepare(train_set, cfg.num_workers, bf16=_bf16("auto"), progress=tqdm)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader_kw = dict(batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_set) > cfg.batch_size,
                     num_workers=cfg.num_workers, generator=gen)
    dctx = _ddp.context()  # under torchrun: each process loads a 1/N share of every global batch
    loader_kw = _ddp.loader_kwargs(loader_kw, train_set, dctx, cfg.seed)

    # -- model, optimiser, schedule ---------------------------------------------------------------
    model_kwargs = {"in_chans": pre.channels, "input_size": cfg.input_size, **cfg.model_kwargs}
    model = create_model(cfg.model, num_classes=len(labels), pretrained=cfg.pretrained, **model_kwargs)
    pretrained_info = model.pretrained_info
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    use_bf16 = _bf16(cfg.precision)
    if cfg.init_from:
        _init_from(model, cfg.init_from)
    net = _ddp.wrap(model, dctx, cfg.freeze_backbone)  # DDP under torchrun, else model itself
    optimizer = _optimizer(model, cfg)
    steps_per_epoch = max(1, len(train_set) // cfg.batch_size if loader_kw["drop_last"] else
                          math.ceil(len(train_set) / cfg.batch_size))
    scheduler = _schedule(optimizer, int(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch)
    # EMA of weights and BatchNorm statistics: evaluated, checkpointed and exported instead of
    # the raw weights (which stay in the checkpoint for --resume).
    ema = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay > 0 else None)
    final = ema.module if ema is not None else model  # the weights that are evaluated and kept
    if ema is not None and dctx.is_main and cfg.epochs * steps_per_epoch < 2 / (1 - cfg.ema_decay):
        log.warning("ema_decay=%s averages over ~%d steps but the run has only %d: the kept weights "
                    "will lag; use a smaller ema_decay (or 0) for short runs", cfg.ema_decay,
                    round(1 / (1 - cfg.ema_decay)), cfg.epochs * steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history, best_top1, start_epoch, elapsed_before = [], -1.0, 0, 0.0

    if cfg.resume and (out / "last.pt").is_file():
        ckpt = load_checkpoint(out / "last.pt")
        if ckpt["model_name"] != cfg.model or ckpt["labels"] != labels:
            raise ValueError(f"{out / 'last.pt'} was trained with another model or class set; "
                             "use a new --out folder")
        model.load_state_dict(ckpt["raw_model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, best_top1 = ckpt["history"], ckpt["best_top1"]
        start_epoch, elapsed_before = ckpt["epoch"] + 1, ckpt.get("train_seconds", 0.0)
        gen.set_state(ckpt["loader_rng"])
        log.info("resumed from %s at epoch %d", out / "last.pt", start_epoch)

    def state(epoch: int, train_seconds: float) -> dict:
        return {"kind": "classifier", "model_name": cfg.model, "model_kwargs": model_kwargs,
                "model": final.state_dict(), "raw_model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "labels": labels, "coarse_labels": dataset.coarse_labels,
                "preprocess": pre.to_dict(), "train_config": cfg.to_dict(), "epoch": epoch,
                "history": history, "best_top1": best_top1, "train_seconds": train_seconds,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "loader_rng": gen.get_state(), "skulens_version": skulens.__version__,
                "torch_version": str(torch.__version__), "dataset": str(Path(cfg.data).resolve()),
                "pretrained": pretrained_info, "teacher": teacher.info if teacher else None,
                "precision": "bf16" if use_bf16 else "fp32"}

    mix_gen = torch.Generator().manual_seed(cfg.seed + 1)

    # -- epochs ----------------------------------------------------------------------------------
    t_train = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        frozen = epoch < cfg.freeze_backbone
        for name, p in model.named_parameters():
            p.requires_grad_(not frozen or name.startswith("head."))
        model.train()
        train_set.epoch = epoch
        _ddp.set_epoch(loader_kw, epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(DataLoader(train_set, **loader_kw), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", leave=False)
        for batch in bar:                      # x [B, C, H, W] float32, y [B] (+ soft [B, K])
            x, y = batch[0].contiguous(memory_format=memory_format), batch[1]
            x, y_b, lam = _mix(x, y, cfg.mix_prob, mix_gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = net(x)                # [B, K]
            logits = logits.float()
            if teacher is not None:
                loss = distill_loss(logits, batch[2], y, cfg.distill_alpha, cfg.distill_temperature, criterion)
            else:
                loss = lam * criterion(logits, y) + (1 - lam) * criterion(logits, y_b)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        loss_sum, correct, seen = _ddp.all_reduce_sums(dctx, loss_sum, correct, seen)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": correct / seen,
                  "lr": optimizer.param_groups[0]["lr"]}
        if len(x_val):
            v_logits = predict_logits(final, x_val)
            record["val_loss"] = float(nn.functional.cross_entropy(v_logits, y_val))
            record["val_top1"] = float((v_logits.argmax(1) == y_val).float().mean())
        history.append(record)
        seconds = elapsed_before + time.perf_counter() - t_train
        log.info("epoch %d/%d  loss %.3f  train %.3f  val %.3f  (%.0fs)", epoch + 1, cfg.epochs,
                 record["train_loss"], record["train_top1"], record.get("val_top1", float("nan")), seconds)
        score = record.get("val_top1", record["train_top1"])
        if score >= best_top1 or cfg.select == "last":
            best_top1 = score
            if dctx.is_main:
                save_checkpoint(out / "best.pt", state(epoch, seconds))
        if dctx.is_main:
            save_checkpoint(out / "last.pt", state(epoch, seconds))
    train_seconds = elapsed_before + time.perf_counter() - t_train
    if not dctx.is_main:  # under torchrun only rank 0 evaluates and writes
        return {"rank": dctx.rank}

    # -- final evaluation of the best checkpoint ------------------------------------------------
    best = load_checkpoint(out / "best.pt")
    final.load_state_dict(best["model"])
    # best_*: the checkpoint in best.pt, which cfg.select chose (the last epoch, or the best val one)
    metrics = {"model": cfg.model, "recipe": cfg.recipe, "pretrained": (pretrained_info or {}).get("weights"),
               "teacher": cfg.teacher, "input_size": cfg.input_size, "train_size": cfg.train_size,
               "precision": "bf16" if use_bf16 else "fp32",
               "num_classes": len(labels), "select": cfg.select, "best_epoch": best["epoch"] + 1,
               "best_val_top1": best_top1, "train_seconds": round(train_seconds, 1),
               "total_seconds": round(time.perf_counter() - t_start, 1),
               "cpu_seconds": round(_cpu_seconds() - cpu_start, 1), "torch_threads": torch.get_num_threads(),
               "n_train": len(train_samples), "n_val": len(val_samples)}
    eval_split = "test" if dataset.splits.get("test") else "val"
    eval_samples = dataset.splits.get(eval_split) or []
    if eval_samples:
        x_eval = eval_tensors(eval_samples, pre)
        y_eval = np.array([s.label for s in eval_samples])
        logits = predict_logits(final, x_eval).numpy()
        coarse = None
        if dataset.fine_to_coarse:
            coarse = np.array([dataset.fine_to_coarse.get(i, -1) for i in range(len(labels))])
        report = accuracy_report(logits, y_eval, labels, coarse_of=coarse)
        metrics["eval"] = {"split": eval_split, **report}
        cm = confusion_matrix(logits.argmax(1), y_eval, len(labels))
        save_confusion(cm, labels, out / "confusion.png")
    best["metrics"] = metrics
    save_checkpoint(out / "best.pt", best)
    save_curves(history, out / "curves.png")
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {**metrics, "history": history, "config": cfg.to_dict()}, indent=2)))
    return metrics
