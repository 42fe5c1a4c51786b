"""Training a product classifier, top to bottom.

    cfg = TrainConfig(data="path/to/dataset", model="edge_resnet_patch", epochs=60)
    result = train(cfg)          # writes the run folder cfg.out (see checkpoint.py)

Pipeline: check the config and the run folder -> load the dataset, split, check it -> decode +
cache images -> settings the user left open from the recipe and the run's size (config.resolve)
-> args.json -> model from the registry -> SGD/AdamW with warm-up + cosine -> per epoch: train
(augment -> preprocessing contract -> model), validate, checkpoint atomically (last.pt every
epoch; best.pt, the one to deploy: the last epoch, or with ``select="val"`` the best val
top-1), a row of results.csv, early stop (``patience``) -> final test evaluation of best.pt,
metrics.json, plots.

Why "last" by default: at the end of a cosine schedule the EMA weights are the model, while a
small validation split picks noise (Grocery's val has 296 photos of 60 of the 81 classes: on
two seeds of edge_resnet_patch the best-val epoch was 1.4 and 2.4 pp worse on test).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm as _tqdm

import skulens
from skulens import DatasetError, load_dataset
from skulens.internal import accuracy_report, atomic_write_text, config_to_dict, cpu_seconds, sha256_file

from . import _distributed as _ddp
from .checkpoint import (check_run_folder, fork_training, init_from_checkpoint, load_checkpoint,
                         remove_partial_writes, resume_training, rng_states, save_checkpoint, write_args,
                         write_results)
from .config import (TrainConfig, TrainConfigError, make_preprocess, resolve, steps_per_epoch,
                     synthetic_batch_size)
from .data import TrainSet, balanced_sampler, check_training_data, eval_tensors, load_images, training_split
from .distill import Teacher, distill_loss
from .losses import GroupSmoothedCrossEntropy, cutmix_or_mixup
from .models import create_model, list_models, preprocess_facts
from .optim import lr_factor, make_optimizer, make_schedule
from .plots import confusion_matrix, save_confusion, save_curves

log = logging.getLogger(__name__)

def tqdm(*args, **kwargs):
    """Progress bars on a terminal only (``disable=None``), so CI logs stay readable."""
    return _tqdm(*args, disable=None, **kwargs)


def _bf16(precision: str, device: torch.device = torch.device("cpu")) -> bool:
    """Whether to autocast to bfloat16: asked for, or "auto" where the device computes it
    natively (a CPU with AVX512-BF16/AMX instructions, a GPU with bf16 support)."""
    if precision == "bf16":
        return True
    if precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return bool((check and check()) or (amx and amx()))
    return False


def _device(cfg: TrainConfig, dctx) -> torch.device:
    """--device: cpu, cuda, or auto = cuda when available. Data-parallel runs (torchrun) stay on
    CPU, where the gloo backend and CPUSyncBatchNorm work."""
    if cfg.device == "cpu" or (cfg.device == "auto" and (dctx.enabled or not torch.cuda.is_available())):
        return torch.device("cpu")
    if dctx.enabled:
        raise TrainConfigError("--device cuda: data-parallel runs (torchrun) train on the CPU; use --device cpu")
    if not torch.cuda.is_available():
        raise TrainConfigError(f"--device cuda: CUDA is not available to this torch ({torch.__version__}); "
                               "use --device cpu (or auto)")
    return torch.device("cuda")


@torch.no_grad()
def predict_logits(model, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits [N, K] (float32, on the CPU) of ``model`` in eval mode, run on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x[i:i + batch_size].to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
                      for i in range(0, len(x), batch_size)])


def _scores(model, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(cross-entropy loss, top-1) of ``model`` on ``x``, ``y``."""
    logits = predict_logits(model, x)
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def _train_mode(model, head: str, frozen: bool) -> None:
    """Training mode; ``frozen``: only the parameters under ``head`` learn, and the backbone's
    BatchNorm keeps its statistics too (frozen means frozen)."""
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or name.startswith(head))
    model.train()
    if frozen:
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not (name + ".").startswith(head):
                m.eval()


def _evaluate(model, samples, split: str, pre, labels, coarse_of, confusion_png: Path) -> dict:
    """Top-1 (fine and, with ``coarse_of``, coarse) of ``model`` on ``samples``; draws the confusion matrix."""
    x = eval_tensors(samples, pre)
    y = np.array([s.label for s in samples])
    logits = predict_logits(model, x).numpy()
    report = accuracy_report(logits, y, labels, coarse_of=np.array(coarse_of) if coarse_of else None)
    save_confusion(confusion_matrix(logits.argmax(1), y, len(labels)), labels, confusion_png, split=split)
    return {"split": split, **report}


def _epochs_without_improvement(history: list[dict]) -> int:
    """Epochs since the best val top-1 (between equal top-1s the lower val loss is better)."""
    best = max(range(len(history)), key=lambda i: (history[i]["val_top1"], -history[i]["val_loss"]))
    return len(history) - 1 - best


def _log_derived(recipe_cfg: TrainConfig, cfg: TrainConfig, n_train: int) -> dict:
    """Log (and return) the settings the run's size changed from the recipe's values."""
    changed = {k: getattr(cfg, k) for k in ("batch_size", "lr", "epochs", "warmup_epochs", "ema_decay")
               if getattr(cfg, k) != getattr(recipe_cfg, k)}
    if changed:
        log.info("%d training images: %s (the %s recipe's values, %s, are for larger datasets; a flag "
                 "overrides)", n_train, ", ".join(f"{k} {v:g}" for k, v in changed.items()), cfg.recipe,
                 ", ".join(f"{getattr(recipe_cfg, k):g}" for k in changed))
    return changed


def train(cfg: TrainConfig) -> dict:
    """Train per ``cfg``; returns the final metrics dict (also written to ``out/metrics.json``)."""
    t_start, cpu_start = time.perf_counter(), cpu_seconds()
    asked = cfg
    cfg = resolve(cfg)  # model, pretrained and the recipe's values (refined below by the run's size)
    if cfg.model not in list_models():
        raise TrainConfigError(f"unknown model {cfg.model!r}; available: {', '.join(list_models())}")
    out = Path(cfg.out)
    dctx = _ddp.context()  # under torchrun: each process loads a 1/N share of every global batch
    if dctx.is_main:  # the one writer (torchrun stops the other processes when it fails)
        check_run_folder(out, resume=cfg.resume, exist_ok=cfg.exist_ok)  # before any image is decoded
        remove_partial_writes(out)  # a killed run's temp files
    device = _device(cfg, dctx)
    if cfg.balance and (dctx.enabled or cfg.gan_augment):
        raise TrainConfigError("--balance does not combine with torchrun or --gan-augment")
    if cfg.gan_augment and cfg.gan_augment_mode == "add" and (cfg.teacher or cfg.mix_prob > 0 or dctx.enabled):
        raise TrainConfigError("--gan-augment-mode add does not combine with --teacher, --mix-prob or torchrun")
    if cfg.teacher and cfg.mix_prob > 0:
        raise TrainConfigError("distillation (--teacher) and CutMix/MixUp (--mix-prob) do not combine")
    if cfg.patience and cfg.select == "last":
        log.warning("--patience with --select last: an early-stopped run keeps its last epoch, which by then "
                    "has not improved for %d epochs; --select val keeps the best one", cfg.patience)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # -- data ------------------------------------------------------------------------------------
    dataset = load_dataset(cfg.data, class_depth=cfg.class_depth)
    labels = dataset.classes
    # each class's coarse group (-1: none), or None for a dataset without coarse labels
    coarse_of = [dataset.fine_to_coarse.get(i, -1) for i in range(len(labels))] if dataset.fine_to_coarse else None
    if cfg.coarse_smoothing and coarse_of is None:  # refused before any image is decoded
        raise TrainConfigError("coarse_smoothing needs coarse labels (a classes.csv with coarse class ids)")
    train_samples, val_samples = training_split(dataset)
    if not train_samples:
        raise DatasetError(f"{cfg.data}: no training images")
    if dctx.is_main:
        for warning in check_training_data(dataset, train_samples, val_samples, cfg.balance):
            log.warning("%s", warning)
    if cfg.train_on_val:  # the final model of a chosen recipe: every labelled photo but the test split
        log.warning("--train-on-val: the %d val photos are trained on; their figures are no longer held out",
                    len(val_samples))
        train_samples = train_samples + val_samples  # after the checks: not a train/val leak to warn of
    pre = make_preprocess(cfg, preprocess_facts(cfg.model))  # the contract: evaluation and export
    train_pre = dataclasses.replace(pre, input_size=(cfg.train_size, cfg.train_size))
    teacher = Teacher.from_checkpoint(cfg.teacher, labels) if cfg.teacher else None
    log.info("dataset %s; model %s (%s recipe) on %s", dataset.summary(), cfg.model, cfg.recipe, device)
    with tqdm(total=len(train_samples) + len(val_samples), desc="decode", unit="img", leave=False) as bar:
        cache = cfg.cache_size or 2 * max(cfg.input_size, teacher.input_size if teacher else 0)
        images = load_images(train_samples, cache, progress=bar.update, preprocess=pre)  # decoded as the SDK will
        x_val = eval_tensors(val_samples, pre, progress=bar.update) if val_samples else torch.empty(0)
    y_val = torch.tensor([s.label for s in val_samples], dtype=torch.long)
    extra = synthetic = None
    if cfg.gan_augment:  # synthetic images from an exported generator (training/gan/augment_hook.py)
        from .gan.augment_hook import GanAugment, SyntheticBatches, own_batch_statistics
        extra = GanAugment(cfg.gan_augment, labels, [s.label for s in train_samples], cfg.gan_augment_ratio, cfg.seed,
                           pool_factor=cfg.gan_augment_pool, latent_scale=cfg.gan_augment_latent_scale)
        if cfg.gan_augment_mode == "add":  # not in the dataset: a synthetic batch beside each real one
            synthetic, extra = SyntheticBatches(extra, train_pre, cfg.augment, cfg.seed, cfg.gan_augment_epochs), None
    train_set = TrainSet(images, [s.label for s in train_samples], train_pre, cfg.augment, seed=cfg.seed, extra=extra)
    if teacher is not None:  # the teacher's logits for a fixed set of augmented views (inference: bf16 where native)
        train_set = teacher.prepare(train_set, cfg.num_workers, bf16=_bf16("auto"), progress=tqdm)
    # batch size (and learning rate), epochs, warm-up and EMA the user left open follow the run's size
    cfg = resolve(asked, n_train=len(train_set))
    derived = _log_derived(resolve(asked), cfg, len(train_set))
    gen = torch.Generator().manual_seed(cfg.seed)
    loader_kw = dict(batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_set) > cfg.batch_size,
                     num_workers=cfg.num_workers, generator=gen, pin_memory=device.type == "cuda")
    if cfg.balance:
        loader_kw.update(shuffle=False, sampler=balanced_sampler([s.label for s in train_samples], len(train_set), gen))
    loader_kw = _ddp.loader_kwargs(loader_kw, train_set, dctx, cfg.seed)
    if dctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_args(cfg, out / "args.json")

    # -- model, optimiser, schedule ---------------------------------------------------------------
    model_kwargs = {"in_chans": pre.channels, "input_size": cfg.input_size, **cfg.model_kwargs}
    model = create_model(cfg.model, num_classes=len(labels), pretrained=cfg.pretrained, **model_kwargs)
    pretrained_info = model.pretrained_info
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.init_from:
        init_from_checkpoint(model, cfg.init_from)
    model = model.to(device, memory_format=memory_format)
    use_bf16 = _bf16(cfg.precision, device)
    net = _ddp.wrap(model, dctx, cfg.freeze_backbone)  # DDP under torchrun, else model itself
    optimizer = make_optimizer(model, cfg)
    steps = steps_per_epoch(len(train_set), cfg.batch_size)
    warmup_steps, total_steps = int(cfg.warmup_epochs * steps), cfg.epochs * steps
    scheduler = make_schedule(optimizer, warmup_steps, total_steps)
    # EMA of weights and BatchNorm statistics: evaluated, checkpointed and exported instead of
    # the raw weights (which stay in the checkpoint for --resume).
    ema = (torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay > 0 else None)
    final = ema.module if ema is not None else model  # the weights that are evaluated and kept
    if ema is not None and dctx.is_main and total_steps < 2 / (1 - cfg.ema_decay):
        log.warning("ema_decay=%s averages over ~%d steps but the run has only %d: the kept weights "
                    "will lag; use a smaller ema_decay (or leave it to the run) for short runs", cfg.ema_decay,
                    round(1 / (1 - cfg.ema_decay)), total_steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if cfg.coarse_smoothing:
        criterion = GroupSmoothedCrossEntropy(coarse_of, cfg.label_smoothing, cfg.coarse_smoothing).to(device)
    history, best_top1, start_epoch, elapsed_before, forked_from = [], -1.0, 0, 0.0, None

    mix_gen = torch.Generator().manual_seed(cfg.seed + 1)  # CutMix/MixUp
    if cfg.resume and (out / "last.pt").is_file():  # every state, random-number ones included: exact
        ckpt = resume_training(out / "last.pt", cfg.model, labels, model, ema, optimizer, scheduler, device, gen,
                               mix=mix_gen)
        history, best_top1 = ckpt["history"], ckpt["best_top1"]
        start_epoch, elapsed_before = ckpt["epoch"] + 1, ckpt.get("train_seconds", 0.0)
        forked_from = ckpt.get("forked_from")  # a fork resumed stays a fork
        log.info("resumed from %s at epoch %d", out / "last.pt", start_epoch)
    elif cfg.fork_from:  # another run's states but its random-number ones: this seed's draws from here on
        ckpt = fork_training(cfg.fork_from, cfg, cfg.data, labels, model, ema, optimizer, scheduler)
        history, best_top1 = ckpt["history"], ckpt["best_top1"]
        start_epoch, elapsed_before = ckpt["epoch"] + 1, ckpt.get("train_seconds", 0.0)
        forked_from = {"path": str(Path(cfg.fork_from).resolve()), "sha256": sha256_file(cfg.fork_from),
                       "epoch": start_epoch, "seed": ckpt["train_config"]["seed"], "train_seconds": elapsed_before}
        log.info("forked from %s (epoch %d, seed %d) with seed %d", cfg.fork_from, start_epoch,
                 forked_from["seed"], cfg.seed)

    def state(epoch: int, train_seconds: float) -> dict:
        return {"kind": "classifier", "model_name": cfg.model, "model_kwargs": model_kwargs,
                "model": final.state_dict(), "raw_model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "labels": labels, "coarse_labels": dataset.coarse_labels,
                "preprocess": pre.to_dict(), "train_config": cfg.to_dict(), "epoch": epoch,
                "history": history, "best_top1": best_top1, "train_seconds": train_seconds,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "loader_rng": gen.get_state(), "rng": rng_states(device, mix=mix_gen),
                "skulens_version": skulens.__version__,
                "torch_version": str(torch.__version__), "dataset": str(Path(cfg.data).resolve()),
                "pretrained": pretrained_info, "teacher": teacher.info if teacher else None,
                "precision": "bf16" if use_bf16 else "fp32", "forked_from": forked_from}

    head = model.card.classifier + "."

    # -- epochs ----------------------------------------------------------------------------------
    t_train, stopped_early = time.perf_counter(), None
    for epoch in range(start_epoch, cfg.epochs):
        _train_mode(model, head, frozen=epoch < cfg.freeze_backbone)
        train_set.epoch = epoch
        _ddp.set_epoch(loader_kw, epoch)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(DataLoader(train_set, **loader_kw), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", leave=False)
        syn_batches = synthetic.epoch(epoch, steps, synthetic_batch_size(cfg.gan_augment_ratio, cfg.batch_size,
                                                                         len(train_set)),
                                      cfg.num_workers) if synthetic else None
        for batch in bar:                      # x [B, C, H, W] float32, y [B] (+ soft [B, K])
            n_real, x_syn = len(batch[1]), None
            if syn_batches is not None:        # x [B + S, ...]: the real batch, then S synthetic images
                if cfg.gan_augment_bn == "separate":  # x_syn [S, ...] through the network on its own
                    x_syn, y_syn = next(syn_batches)
                    batch = [batch[0], torch.cat([batch[1], y_syn])]
                else:
                    batch = [torch.cat(pair) for pair in zip(batch, next(syn_batches))]
            x = batch[0].to(device, non_blocking=True).contiguous(memory_format=memory_format)
            y = batch[1].to(device, non_blocking=True)
            x, y_b, lam = cutmix_or_mixup(x, y, cfg.mix_prob, mix_gen)  # (add mode: off, lam = 1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = net(x)                # [B, K]
                if x_syn is not None:          # [B + S, K]: the real logits, then the synthetic ones
                    with own_batch_statistics(net):
                        x_syn = x_syn.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                        logits = torch.cat([logits, net(x_syn)])
            logits = logits.float()
            if teacher is not None:
                loss = distill_loss(logits, batch[2].to(device), y, cfg.distill_alpha, cfg.distill_temperature,
                                    criterion)
            else:
                loss = lam * criterion(logits, y) + (1 - lam) * criterion(logits, y_b)
                loss = loss * len(y) / n_real  # add mode: mean over the real images + (S / B) x over the synthetic
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            logits, y, y_b = logits[:n_real], y[:n_real], y_b[:n_real]  # logged: the real images only
            with torch.no_grad():  # logged without label smoothing or distillation: comparable with val_loss
                ce = nn.functional.cross_entropy
                loss_sum += (lam * ce(logits, y) + (1 - lam) * ce(logits, y_b)).item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        loss_sum, correct, seen = _ddp.all_reduce_sums(dctx, loss_sum, correct, seen)
        # train_*: the live weights on this epoch's augmented batches; val_*: the kept weights
        # (the EMA when on); live_val_*: the live weights on val, to compare like with like
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": correct / seen,
                  "lr": cfg.lr * lr_factor(scheduler.last_epoch, warmup_steps, total_steps)}
        if len(x_val):
            record["val_loss"], record["val_top1"] = _scores(final, x_val, y_val)
            if ema is not None:
                record["live_val_loss"], record["live_val_top1"] = _scores(model, x_val, y_val)
        seconds = elapsed_before + time.perf_counter() - t_train
        record["seconds"] = round(seconds, 1)
        history.append(record)
        log.info("epoch %d/%d  loss %.3f  train %.3f  val %.3f  (%.0fs)", epoch + 1, cfg.epochs,
                 record["train_loss"], record["train_top1"], record.get("val_top1", float("nan")), seconds)
        score = record.get("val_top1", record["train_top1"])
        if score >= best_top1 or cfg.select == "last":
            best_top1 = score
            if dctx.is_main:
                save_checkpoint(out / "best.pt", state(epoch, seconds))
        if dctx.is_main:
            save_checkpoint(out / "last.pt", state(epoch, seconds))
            if cfg.snapshot_every and (epoch + 1) % cfg.snapshot_every == 0:
                save_checkpoint(out / f"epoch{epoch + 1:03d}.pt", state(epoch, seconds))
            write_results(history, out / "results.csv")
        if cfg.patience and len(x_val) and _epochs_without_improvement(history) >= cfg.patience:
            stopped_early = epoch + 1
            log.info("early stop after epoch %d: val top-1 has not improved for %d epochs", epoch + 1, cfg.patience)
            break
    train_seconds = elapsed_before + time.perf_counter() - t_train
    if not dctx.is_main:  # under torchrun only rank 0 evaluates and writes
        return {"rank": dctx.rank}

    # -- final evaluation of the best checkpoint ------------------------------------------------
    best = load_checkpoint(out / "best.pt")
    final.load_state_dict(best["model"])
    # best_*: the checkpoint in best.pt, which cfg.select chose (the last epoch, or the best val one)
    metrics = {"model": cfg.model, "recipe": cfg.recipe, "pretrained": (pretrained_info or {}).get("weights"),
               "teacher": cfg.teacher, "input_size": cfg.input_size, "train_size": cfg.train_size,
               "precision": "bf16" if use_bf16 else "fp32", "device": str(device),
               "num_classes": len(labels), "select": cfg.select, "best_epoch": best["epoch"] + 1,
               "best_val_top1": best_top1, "epochs_run": len(history), "stopped_early": stopped_early,
               "derived_from_run_size": derived, "train_seconds": round(train_seconds, 3),
               "total_seconds": round(time.perf_counter() - t_start, 1),
               "cpu_seconds": round(cpu_seconds() - cpu_start, 3), "torch_threads": torch.get_num_threads(),
               "n_train": len(train_samples), "n_val": len(val_samples), "forked_from": forked_from}
    eval_split = "test" if dataset.splits.get("test") else "val"
    eval_samples = dataset.splits["test"] if eval_split == "test" else val_samples
    if eval_samples:
        metrics["eval"] = _evaluate(final, eval_samples, eval_split, pre, labels, coarse_of, out / "confusion.png")
    best["metrics"] = metrics
    save_checkpoint(out / "best.pt", best)
    save_curves(history, out / "curves.png", best_epoch=metrics["best_epoch"])
    atomic_write_text(out / "metrics.json", json.dumps(
        {**metrics, "history": history, "config": config_to_dict(cfg)}, indent=2))
    return metrics
