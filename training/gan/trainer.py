"""Training the class-conditional GAN, top to bottom.

    cfg = GanConfig(data="path/to/dataset", image_size=64, epochs=100)
    metrics = train_gan(cfg)   # writes last.pt, samples/epoch_XXXX.png, losses.png, metrics.json

Per step (hinge loss, n_dis = 1): fake = G(z, y) with the real batch's labels y;
D step on DiffAugment(real) vs DiffAugment(fake.detach()); G step on D(DiffAugment(fake))
(+ the classifier-guidance cross-entropy of the projected D's frozen classifier, when on;
+ the coverage term, each real image's nearest generated candidate pulled onto it, when on:
:mod:`.coverage`); EMA update of G. Per epoch: BatchNorm standing statistics of the EMA
generator, a fixed-noise grid (one row per chosen class, one column per latent vector), an
atomic checkpoint (the EMA generator is what gets exported), the loss curves.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm as _tqdm

import skulens
from skulens import DatasetError
from skulens.internal import atomic_write, cpu_seconds, make_grid, write_png


from ..checkpoint import load_checkpoint, save_checkpoint
from ..trainer import _bf16
from .config import GanConfig, GanConfigError
from .data import RealImages, load_real, parse_classes, select_classes
from .coverage import coverage_loss, nearest_latents
from .diffaug import diff_augment
from .models import EMA, Generator, build_discriminator, disc_kwargs, gen_kwargs, standing_stats
from .modes import mode_parents, modes_for, num_modes, place_latents

log = logging.getLogger(__name__)
MODEL_NAMES = {"dcgan": "cdcgan", "projected": "projected_cgan"}  # discriminator arch -> model name


def tqdm(*args, **kwargs):
    return _tqdm(*args, disable=None, **kwargs)


def to_bgr_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] (RGB or gray) -> uint8 OpenCV images (BGR or gray), as the SDK does."""
    a = torch.clamp(torch.round((x.detach().float() + 1) * 127.5), 0, 255).to(torch.uint8).numpy()
    a = a.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(a[..., 0] if a.shape[-1] == 1 else a[..., ::-1])


def generator_from_checkpoint(ckpt: dict, ema: bool = True) -> Generator:
    """The (EMA) generator of a GAN checkpoint, weights loaded, eval mode."""
    if ckpt.get("kind") != "generator":
        raise skulens.ModelError(f"checkpoint is a {ckpt.get('kind', 'classifier')} checkpoint, not a generator")
    gen = Generator(**ckpt["gen_kwargs"])
    gen.load_state_dict(ckpt["generator_ema" if ema else "generator"])
    return gen.eval()


def _save_losses(history: list[dict], path) -> Path:
    from ..plots import _plt

    plt = _plt()
    ep = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(ep, [h["loss_d"] for h in history], label="D hinge loss")
    ax1.plot(ep, [h["loss_g"] for h in history], label="G adversarial loss")
    if any(h.get("loss_ms") for h in history):
        ax1.plot(ep, [h.get("loss_ms", 0.0) for h in history], label="G mode-seeking term")
    if any(h.get("loss_cov") for h in history):
        ax1.plot(ep, [h.get("loss_cov", 0.0) for h in history], label="G coverage term (weighted)")
    if any(h.get("loss_cls") for h in history):
        ax1.plot(ep, [h.get("loss_cls", 0.0) for h in history], label="G guidance cross-entropy (unweighted)")
    ax1.set(xlabel="epoch", ylabel="loss", title="losses (epoch means)")
    ax1.legend()
    ax2.plot(ep, [h["d_real"] for h in history], label="D(real)")
    ax2.plot(ep, [h["d_fake"] for h in history], label="D(fake)")
    ax2.axhline(0, color="grey", lw=0.5)
    ax2.set(xlabel="epoch", ylabel="score", title="discriminator scores (augmented inputs)")
    ax2.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


def train_gan(cfg: GanConfig, real: RealImages | None = None) -> dict:
    """Train per ``cfg`` (on ``real`` if given, else on ``cfg.data``); returns the metrics dict."""
    threads_before = torch.get_num_threads()
    try:
        return _train(cfg, real)
    finally:  # cfg.threads must not leak into the caller's process
        torch.set_num_threads(threads_before)


def mode_seeking_loss(weight: float, fake: torch.Tensor, z: torch.Tensor,
                      features: torch.Tensor | None = None) -> torch.Tensor:
    """MSGAN (Mao et al. 2019) against intra-class mode collapse: ``weight / mean(d(G(z1, c), G(z2, c))
    / d(z1, z2))`` over the pairs (i, i + half) of a batch whose two halves share their classes.
    d(z1, z2): mean absolute difference of the latents. d(images): the mean absolute pixel difference
    of ``fake`` [B, C, S, S], or, given ``features`` [B, F] of the same images, their cosine distance
    (diverse in what an ImageNet network sees, not only in colour and position). 0 when weight is 0."""
    if weight <= 0:
        return torch.zeros(())
    half = len(z) // 2
    if features is not None:
        d_img = 1 - F.cosine_similarity(features[:half], features[half:2 * half], dim=1)   # [half]
    else:
        d_img = (fake[:half] - fake[half:2 * half]).abs().mean(dim=(1, 2, 3))                # [half]
    d_z = (z[:half] - z[half:2 * half]).abs().mean(dim=1)                                   # [half]
    return weight / ((d_img / d_z).mean() + 1e-5)


def _train(cfg: GanConfig, real: RealImages | None) -> dict:
    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if real is None:
        real = load_real(cfg.data, cfg.image_size, cfg.channels)
    real = select_classes(real, parse_classes(cfg.classes, real.classes))
    if real.images.shape[1:] != (cfg.channels, cfg.image_size, cfg.image_size):
        raise DatasetError(f"real images are {tuple(real.images.shape[1:])}, the GAN makes "
                           f"{(cfg.channels, cfg.image_size, cfg.image_size)}")
    counts = real.counts()
    if len(real) == 0 or len(real.classes) < 1:
        raise DatasetError(f"{cfg.data}: no training images")
    log.info("GAN data: %d images, %d classes (%s), %dx%d x%d", len(real), len(real.classes),
             real.source, cfg.image_size, cfg.image_size, cfg.channels)
    if min(counts) == 0:
        log.warning("classes without images: %s", [c for c, n in zip(real.classes, counts) if n == 0])

    k = len(real.classes)
    last = out / "last.pt"
    ckpt = load_checkpoint(last) if cfg.resume and last.is_file() else None   # the run to resume, read once
    modes = bounds = None  # sub-class conditioning: each real image's sub-class, the generator's shares
    if cfg.subclasses > 1:
        if cfg.resolved_discriminator() != "projected":
            raise GanConfigError("subclasses needs the projected discriminator (pretrained extra, RGB)")
        modes, bounds = modes_for(cfg, real, ckpt)
        sizes = torch.bincount(modes, minlength=num_modes(bounds))
        log.info("sub-classes: %d classes split into %d groups (up to %d per class), %d-%d real images each "
                 "(median %d)", k, len(sizes), cfg.subclasses, sizes.min(), sizes.max(), sizes.median())
    n_cond = k if bounds is None else num_modes(bounds)  # what D is conditioned on
    gk = gen_kwargs(cfg, k, bounds)
    dk = disc_kwargs(cfg, n_cond, guidance_classes=k, mode_classes=None if bounds is None else mode_parents(bounds))
    model_name = MODEL_NAMES[dk["arch"]]
    G, D = Generator(**gk).to(memory_format=torch.channels_last), build_discriminator(dk)  # NHWC: 1.5x faster convs
    d_params = [p for p in D.parameters() if p.requires_grad]  # the projected D's ImageNet network stays frozen
    use_bf16 = dk["arch"] == "projected" and _bf16(cfg.precision)
    if dk["arch"] == "projected":
        D = D.to(memory_format=torch.channels_last)
    log.info("GAN: %s, discriminator %s (%d trainable parameters%s)", model_name, dk["arch"],
             sum(p.numel() for p in d_params), ", bf16 autocast" if use_bf16 else "")
    ema = EMA(G, cfg.ema_decay)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(d_params, lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))

    guided = cfg.class_guidance > 0
    ms_features = cfg.mode_seeking > 0 and cfg.mode_seeking_space == "features"
    if ms_features and dk["arch"] != "projected":
        raise GanConfigError("mode_seeking_space features needs the projected discriminator (pretrained extra)")

    def disc(x, y, cond: float, logits: bool = False, pooled: bool = False):  # y: D's condition (class or sub-class)
        """-> (float32 scores per discriminator branch ([B] or [B, n_scores]), guidance logits [B, K]
        (only with ``logits`` and guidance on) or None, pooled ImageNet features [B, 1280] (only with
        ``pooled``) or None). ``cond``: weight of the class-conditional terms (transitional conditioning)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            if (guided and logits) or pooled:
                scores, logits, feats = D.scores_logits_pooled(x, y, logits=guided and logits, pooled=pooled,
                                                               cond=cond)
            else:
                scores, logits, feats = D(x, y, cond=cond), None, None
        scores = scores if isinstance(scores, tuple) else (scores,)
        return ([s.float() for s in scores], logits.float() if logits is not None else None,
                feats.float() if feats is not None else None)
    rng = torch.Generator().manual_seed(cfg.seed)
    grid_ids = parse_classes(cfg.grid_classes, real.classes)[:64] if cfg.grid_classes else list(range(min(k, 10)))
    fixed_z = torch.randn(cfg.grid_per_class, cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
    history, start_epoch, step, elapsed_before, cpu_before = [], 0, 0, 0.0, 0.0

    if ckpt is not None:
        if (ckpt.get("kind") != "generator" or ckpt["labels"] != real.classes or ckpt["gen_kwargs"] != gk
                or ckpt.get("disc_kwargs", {}).get("arch", "dcgan") != dk["arch"]
                or ckpt.get("disc_kwargs", {}).get("guidance", False) != dk.get("guidance", False)):
            raise DatasetError(f"{last} was trained with another class set or architecture; use a new --out")
        G.load_state_dict(ckpt["generator"])
        D.load_state_dict(ckpt["discriminator"])
        ema.model.load_state_dict(ckpt["generator_ema"])
        ema.updates = ckpt["ema_updates"]
        opt_g.load_state_dict(ckpt["optimizer_g"])
        opt_d.load_state_dict(ckpt["optimizer_d"])
        rng.set_state(ckpt["rng"])
        history, start_epoch, step = ckpt["history"], ckpt["epoch"] + 1, ckpt["step"]
        elapsed_before, cpu_before = ckpt.get("train_seconds", 0.0), ckpt.get("cpu_seconds", 0.0)
        log.info("resumed from %s at epoch %d", last, start_epoch)
    elif guided:  # the guidance classifier: fitted once on the real images, frozen, saved with D
        from .projected import fit_guidance

        fit = fit_guidance(D, real.images, real.labels, seed=cfg.seed)
        log.info("guidance classifier fitted on %d real views: train top-1 %.3f", fit["n"], fit["train_top1"])

    def state(epoch: int, seconds: float) -> dict:
        return {"kind": "generator", "model_name": model_name, "gen_kwargs": gk, "disc_kwargs": dk,
                "generator_ema": ema.model.state_dict(), "generator": G.state_dict(),
                "discriminator": D.state_dict(), "ema_updates": ema.updates,
                "optimizer_g": opt_g.state_dict(), "optimizer_d": opt_d.state_dict(), "rng": rng.get_state(),
                "labels": list(real.classes), "class_counts": counts, "n_train": len(real),
                **({"real_modes": modes} if modes is not None else {}),
                **({"coverage_latents": z_cover} if z_cover is not None else {}),
                "output": {"channel_order": "GRAY" if cfg.channels == 1 else "RGB", "value_range": [-1.0, 1.0],
                           "layout": "NCHW"},
                "train_config": cfg.to_dict(), "epoch": epoch, "step": step, "history": history,
                "train_seconds": seconds, "cpu_seconds": history[-1]["cpu_seconds"] if history else 0.0,
                "dataset": str(real.source), "classifier": cfg.classifier,
                "skulens_version": skulens.__version__, "torch_version": str(torch.__version__)}

    half = cfg.batch_size // 2

    def paired(v):  # mode seeking: the first half's labels twice, so pairs (i, i + half) share them
        return torch.cat([v[:half], v[:half], v[2 * half:]]) if cfg.mode_seeking > 0 else v

    steps = cfg.steps_per_epoch or max(1, len(real) // cfg.batch_size)
    if cfg.conditioning(cfg.epochs * steps - 1) < 1.0:
        raise GanConfigError(f"transitional conditioning ends at step {cfg.transition_end + 1}, but the run has "
                             f"{cfg.epochs * steps} steps ({cfg.epochs} epochs of {steps}): the generator must "
                             "finish fully conditional")
    policies = cfg.policies
    labels_all = torch.arange(k)
    # coverage: each real image's nearest latent [N, z_dim], re-chosen every cfg.coverage_every steps
    z_cover = ckpt.get("coverage_latents") if ckpt is not None and cfg.coverage > 0 else None
    if z_cover is not None and len(z_cover) != len(real):   # the photos changed since: choose them again
        log.info("coverage: %d saved latents for %d real images; choosing them again", len(z_cover), len(real))
        z_cover = None
    t_train, c_train = time.perf_counter(), cpu_seconds()
    for epoch in range(start_epoch, cfg.epochs):
        G.train()
        sums = {"loss_d": 0.0, "loss_g": 0.0, "loss_ms": 0.0, "loss_cov": 0.0, "loss_cls": 0.0, "fake_top1": 0.0,
                "d_real": 0.0, "d_fake": 0.0}
        bar = tqdm(range(steps), desc=f"gan epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
        for _ in bar:
            cond = cfg.conditioning(step)  # 1 unless transitional conditioning: 0 -> 1 over its steps
            if cfg.coverage > 0 and (z_cover is None or step % cfg.coverage_every == 0):
                z_cover = nearest_latents(G, real.images, real.labels, cfg.coverage_candidates, rng, cond,
                                          bf16=_bf16(cfg.precision))
            idx = torch.randint(len(real), (cfg.batch_size,), generator=rng)
            x_real = real.images[idx].float() / 127.5 - 1           # [B, C, S, S] in [-1, 1]
            x_unflipped = x_real
            if cfg.hflip:
                flip = torch.rand(cfg.batch_size, generator=rng) < 0.5
                x_real = torch.where(flip[:, None, None, None], x_real.flip(3), x_real)
            y = real.labels[idx]
            z = torch.randn(cfg.batch_size, cfg.z_dim, generator=rng)
            y_fake = paired(y)  # with mode seeking: pairs (i, i + half) share a class, differ in z
            c_real, c_fake = y, y_fake  # D's condition: the class, or the sub-class (guidance names the class)
            if modes is not None:  # the fakes show the real batch's sub-classes: z[:, 0] inside their shares
                c_real = modes[idx]
                z = place_latents(z, paired(c_real), y_fake, G.mode_bounds, G.mode_offsets, rng)
                c_fake = G.mode_of(z, y_fake)
            fake = G(z, y_fake, cond=cond)

            # discriminator: hinge loss on augmented real and fake (one forward pass)
            for p in d_params:
                p.requires_grad_(True)
            scores, _, _ = disc(torch.cat([diff_augment(x_real, policies, rng),
                                           diff_augment(fake.detach(), policies, rng)]), torch.cat([c_real, c_fake]),
                                cond)
            # hinge per branch, summed over branches (projected heads and the pixel discriminator)
            loss_d = sum(F.relu(1 - s[:cfg.batch_size]).mean() + F.relu(1 + s[cfg.batch_size:]).mean() for s in scores)
            d_real = torch.stack([s[:cfg.batch_size].mean() for s in scores])
            d_fake = torch.stack([s[cfg.batch_size:].mean() for s in scores])
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

            # generator: non-saturating hinge generator loss through the same augmentation
            for p in d_params:
                p.requires_grad_(False)
            scores, logits, pooled = disc(diff_augment(fake, policies, rng), c_fake, cond, logits=True,
                                          pooled=ms_features)
            loss_g = -sum(s.mean() for s in scores)
            loss_cls, fake_top1 = torch.zeros(()), torch.zeros(())
            if logits is not None:  # classifier guidance: the frozen classifier should name the class
                loss_cls = F.cross_entropy(logits, y_fake)
                fake_top1 = (logits.argmax(1) == y_fake).float().mean()
            loss_ms = mode_seeking_loss(cfg.mode_seeking, fake, z, pooled if ms_features else None)
            loss_cov = torch.zeros(())
            if z_cover is not None:  # coverage: the batch's real images, each from its nearest latent
                loss_cov = coverage_loss(cfg.coverage, G(z_cover[idx], y, cond=cond), x_unflipped)
            opt_g.zero_grad(set_to_none=True)
            (loss_g + loss_ms + loss_cov + cond * cfg.class_guidance * loss_cls).backward()
            opt_g.step()
            ema.update(G)
            step += 1
            for key, v in (("loss_d", loss_d), ("loss_g", loss_g), ("loss_ms", loss_ms), ("loss_cov", loss_cov),
                           ("loss_cls", loss_cls),
                           ("fake_top1", fake_top1), ("d_real", d_real.mean()), ("d_fake", d_fake.mean())):
                sums[key] += v.detach().item()
            bar.set_postfix(d=f"{loss_d.detach().item():.3f}", g=f"{loss_g.detach().item():.3f}")

        cond = cfg.conditioning(step - 1)  # the epoch's last step: grid and statistics as G was trained
        standing_stats(ema.model, labels_all, seed=cfg.seed, cond=cond)
        seconds = elapsed_before + time.perf_counter() - t_train
        record = {"epoch": epoch + 1, "step": step, **{key: v / steps for key, v in sums.items()}, "cond": cond,
                  "seconds": round(seconds, 3), "cpu_seconds": round(cpu_before + cpu_seconds() - c_train, 3)}
        history.append(record)
        with torch.no_grad():
            zs = fixed_z.repeat(len(grid_ids), 1)
            ys = torch.tensor(grid_ids).repeat_interleave(cfg.grid_per_class)
            grid = ema.model(zs, ys, cond=cond)
            tiles = to_bgr_uint8(grid)
            grid = grid.reshape(len(grid_ids), cfg.grid_per_class, -1)
        # diversity diagnostic: pixel std across latents within a class vs across class means
        record["within_class_std"] = float(grid.std(dim=1).mean()) if cfg.grid_per_class > 1 else 0.0
        record["across_class_std"] = float(grid.mean(dim=1).std(dim=0).mean()) if len(grid_ids) > 1 else 0.0
        log.info("gan epoch %d/%d  D %.3f  G %.3f  D(real) %.2f  D(fake) %.2f  diversity %.3f/%.3f  (%.0fs)",
                 epoch + 1, cfg.epochs, record["loss_d"], record["loss_g"], record["d_real"], record["d_fake"],
                 record["within_class_std"], record["across_class_std"], seconds)
        if cond < 1.0:
            log.info("  transitional conditioning: class weight %.2f at step %d", cond, step)
        if cfg.coverage > 0:
            log.info("  coverage: weighted pixel term %.3f", record["loss_cov"])
        if guided:
            log.info("  guidance: cross-entropy %.3f, frozen classifier names %.1f %% of the (augmented) fakes",
                     record["loss_cls"], 100 * record["fake_top1"])
        scale = max(1, 64 // cfg.image_size)
        write_png(out / "samples" / f"epoch_{epoch + 1:04d}.png",
                  make_grid(list(tiles), ncol=cfg.grid_per_class, scale=scale,
                            row_labels=[real.classes[i] for i in grid_ids]))
        save_checkpoint(last, state(epoch, seconds))
        if cfg.snapshot_every and (epoch + 1) % cfg.snapshot_every == 0:
            save_checkpoint(out / f"epoch{epoch + 1:03d}.pt", state(epoch, seconds))
        _save_losses(history, out / "losses.png")
        if cfg.max_minutes and seconds >= 60 * cfg.max_minutes and epoch + 1 < cfg.epochs:
            log.info("time budget of %.1f min reached after epoch %d: stopping", cfg.max_minutes, epoch + 1)
            break

    if not history:
        raise DatasetError(f"{out}: nothing to train (epochs={cfg.epochs}, already at epoch {start_epoch})")
    if history[-1].get("cond", 1.0) < 1.0:
        log.warning("stopped at step %d, before the class conditioning was fully faded in (weight %.2f): the "
                    "exported generator is used fully conditional; resume the run to step %d", step,
                    history[-1]["cond"], cfg.transition_end + 1)
    metrics = {"model": model_name, "discriminator": dk["arch"], "num_classes": k, "n_train": len(real), "class_counts": counts,
               "conditions": n_cond,
               "epochs": cfg.epochs, "steps": step, "image_size": cfg.image_size, "channels": cfg.channels,
               "g_params": sum(p.numel() for p in G.parameters()),
               "d_params": sum(p.numel() for p in d_params),
               "d_frozen_params": sum(p.numel() for p in D.parameters() if not p.requires_grad),
               "epochs_done": history[-1]["epoch"],
               "train_seconds": history[-1]["seconds"], "cpu_seconds": history[-1]["cpu_seconds"],
               "torch_threads": torch.get_num_threads(), "total_seconds": round(time.perf_counter() - t_start, 1),
               "final": history[-1], "checkpoint": str(last)}
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(
        {**metrics, "history": history, "config": cfg.to_dict()}, indent=2)))
    return metrics
