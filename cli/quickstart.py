"""`skulens quickstart`: the whole pipeline offline, printed step by step.

demo catalogue (or --data) -> train -> export fp32 + INT8 -> evaluate both -> classify a few
images through the torch-free SDK -> model-only latency: PyTorch eager vs ORT fp32 vs ORT INT8
-> a small conditional GAN for about a minute -> export fp32 + gated INT8 -> a sample grid
generated through the torch-free SDK.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from skulens import ClassifierOptions, ImageClassifier, decode_image, load_dataset

log = logging.getLogger(__name__)


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_quickstart(data=None, out="runs/quickstart", model=None, epochs=None,
                   input_size=64, per_class=50, seed=0, gan_seconds=60.0) -> int:
    from skulens.export import ExportConfig, export_classifier
    from skulens.bench._timing import ort_runner, time_callables, torch_runner
    from skulens.training import TrainConfig, train
    from skulens.training.config import resolve
    from skulens.training.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
    from skulens.training.demo_data import make_demo_catalogue

    t0 = time.perf_counter()
    out = Path(out)
    if data is None:
        data = out / "demo_catalogue"
        make_demo_catalogue(data, per_class=per_class, seed=seed)
        _say(f"[1/6] demo catalogue: generated {data} (product images drawn with OpenCV)")
        # a short run on small images: no weight EMA (it needs thousands of steps); with ImageNet
        # weights a few epochs at 96 px suffice, from scratch 20 at 64 px
        if resolve(TrainConfig(data=str(data), model=model)).pretrained:
            size = input_size or 96
            recipe = dict(epochs=epochs or 5, batch_size=32, input_size=size, train_size=size, ema_decay=0.0)
        else:
            recipe = dict(epochs=epochs or 20, batch_size=32, input_size=input_size or 64, ema_decay=0.0)
    else:
        _say(f"[1/6] dataset: {data}")
        recipe = dict(epochs=epochs, input_size=input_size)  # None: the recipe's defaults
    dataset = load_dataset(data)
    _say(f"      {dataset.summary()}")

    cfg = resolve(TrainConfig(data=str(data), out=str(out / "train"), model=model, seed=seed,
                              exist_ok=True, **recipe))  # a re-run of the quickstart replaces its own run
    metrics = train(cfg)
    ev = metrics.get("eval", {})
    how = f"fine-tuned from ImageNet {metrics['pretrained']} weights" if metrics.get("pretrained") else "trained from scratch"
    _say(f"[2/6] {cfg.model} {how}, {cfg.epochs} epochs in {metrics['train_seconds']:.0f}s: "
         f"best.pt (epoch {metrics['best_epoch']}, select {metrics['select']}) val top-1 {metrics['best_val_top1']:.3f}, "
         f"PyTorch {ev.get('split', '-')} top-1 {ev.get('top1', float('nan')):.3f}")

    onnx_path = out / "model.onnx"
    report = export_classifier(ExportConfig(checkpoint=str(out / "train" / "best.pt"), out=str(onnx_path), int8=True,
                                            data=str(data)))
    q = report["int8"]
    _say(f"[3/6] exported {onnx_path} ({report['fp32']['size_bytes'] / 1e6:.2f} MB, parity vs PyTorch "
         f"{report['parity_max_abs_logit_diff']:.1e}) and {q['path']} ({q['size_bytes'] / 1e6:.2f} MB, "
         f"{q['quantization']['activations'].upper()}S8 QDQ); input {report['input']['dtype']} "
         f"{report['input']['layout']}")
    if "eval" in q:
        f, i = report["fp32"]["eval"], q["eval"]
        _say(f"[4/6] {f['split']} top-1 (n={f['n']}): fp32 {f['top1']:.3f}, INT8 {i['top1']:.3f} "
             f"(drop {q['top1_drop_pp']:+.2f} pp), top-1 agreement {q['top1_agreement_with_fp32']:.3f}")

    samples = (dataset.splits.get("test") or dataset.split("train"))[:: max(1, len(dataset.classes))][:4]
    with ImageClassifier.from_path(q["path"], ClassifierOptions(top_k=3, num_threads=1)) as clf:
        for s in samples:
            r = clf.classify(s.path)
            _say(f"      {Path(s.path).name}: true {dataset.classes[s.label]!r} -> {r.top.label!r} "
                 f"({r.top.score:.2f})")
        x = clf.preprocess(samples[0].path)[None]
    ckpt = load_checkpoint(out / "train" / "best.pt")
    torch_x = preprocess_of(ckpt).apply(decode_image(samples[0].path))[None]  # what PyTorch was trained on
    eager, fp32, int8 = time_callables([torch_runner(model_from_checkpoint(ckpt), torch_x, 1), ort_runner(onnx_path, x, 1),
                                        ort_runner(q["path"], x, 1)], rounds=5, iters=30)
    _say("[5/6] model-only latency, batch 1, 1 thread (interleaved, median):")
    _say(f"      PyTorch eager {eager * 1e3:7.3f} ms\n      ORT fp32      {fp32 * 1e3:7.3f} ms "
         f"({eager / fp32:.1f}x vs eager)\n      ORT INT8      {int8 * 1e3:7.3f} ms "
         f"({fp32 / int8:.1f}x vs fp32, {eager / int8:.1f}x vs eager)")
    if gan_seconds > 0:
        _gan_step(data, out, dataset, seed, gan_seconds)
    _say(f"done in {time.perf_counter() - t0:.0f}s; artefacts in {out}/ "
         f"(try: skulens predict {q['path']} {samples[0].path})")
    return 0


def _gan_step(data, out: Path, dataset, seed: int, seconds: float) -> None:
    """A small class-conditional GAN for about ``seconds`` (projected discriminator where the
    pretrained extra is installed), exported like a classifier (fp32 + INT8 behind its quality
    gate), then a grid generated through the torch-free SDK."""
    from skulens import ImageGenerator
    from skulens.export import ExportConfig, export_generator
    from skulens.internal import make_grid, write_png
    from skulens.training.gan import GanConfig, train_gan

    cfg = GanConfig(data=str(data), out=str(out / "gan"), image_size=32, z_dim=64, embed_dim=32, g_width=128,
                    d_width=32, batch_size=16, steps_per_epoch=20, epochs=1000, ema_decay=0.99, lr_d=2e-4,
                    seed=seed, max_minutes=seconds / 60)
    if (out / "gan" / "last.pt").exists():  # a re-run of the quickstart replaces its own GAN
        (out / "gan" / "last.pt").unlink()
    m = train_gan(cfg)
    gen_path = out / "generator.onnx"
    report = export_generator(ExportConfig(checkpoint=str(out / "gan" / "last.pt"), out=str(gen_path), int8=True))
    q = report["int8"]
    gate = q["gate"]
    shipped = (f"INT8 {q['path']} passed the quality gate" if q["shipped"] else q["reason"]) + \
        f" (PSNR vs fp32 {gate.get('psnr_db', float('nan')):.1f} dB)"
    with ImageGenerator.from_path(gen_path) as gen:
        tiles = [t for label in gen.labels for t in gen.generate(label, n=6, seed=seed)]
        grid = write_png(out / "gan_samples.png", make_grid(tiles, ncol=6, scale=2, row_labels=list(gen.labels)))
    _say(f"[6/6] conditional GAN ({m['discriminator']} discriminator), {m['steps']} steps in "
         f"{m['train_seconds']:.0f}s, exported {gen_path}; {shipped}")
    _say(f"      generated through the SDK (6 per class, one row per class): {grid}")
