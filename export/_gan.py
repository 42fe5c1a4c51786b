"""GAN checkpoint -> self-describing generator ONNX (+ INT8 behind a quality gate).

    report = export(ExportConfig(checkpoint="runs/gan/last.pt", out="gen.onnx", int8=True))

writes ``gen.onnx`` (fp32, inputs ``z`` [batch, z_dim] float32 and ``label`` [batch] int64,
output ``images`` [batch, C, H, W] in [-1, 1]) and ``gen.report.json``. With ``int8`` the model
is quantized (static QDQ, calibrated on N(0, 1) latents over every class) and compared with fp32
on fixed seeds through the SDK: PSNR of the uint8 images and, when a classifier checkpoint is
known, the relative distance of its penultimate features. INT8 ships as ``gen.int8.onnx`` only
if it passes; otherwise it is kept as ``gen.int8.rejected.onnx`` and the report says why.
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from skulens import GeneratorOptions, ImageGenerator
from skulens.internal import ModelMetadata
from skulens.training.checkpoint import load_checkpoint
from skulens.training.gan.models import fold_generator_batchnorm
from skulens.training.gan.trainer import generator_from_checkpoint

from ._common import Staging, provenance, quantization_settings
from ._onnx import file_size, io_spec, sha256_file, torch_to_onnx, write_metadata
from ._quantize import quantize_int8
from .config import ExportConfig

log = logging.getLogger(__name__)
LATENT = "N(0, 1): numpy.random.default_rng(seed).standard_normal((n, z_dim)).astype(float32)"


def generator_metadata(ckpt: dict, out, checkpoint_path, **extra) -> ModelMetadata:
    gk = ckpt["gen_kwargs"]
    info = {"z_dim": gk["z_dim"], "output_size": [gk["image_size"], gk["image_size"]],
            "channels": gk["channels"], "channel_order": ckpt["output"]["channel_order"],
            "value_range": list(ckpt["output"]["value_range"]), "layout": "NCHW", "latent": LATENT,
            "num_classes": gk["num_classes"]}
    base = dict(kind="generator", labels=tuple(ckpt["labels"]), model_name=ckpt["model_name"],
                io=io_spec(out), generator=info, provenance={**provenance(checkpoint_path),
                                                             "dataset": ckpt.get("dataset")},
                metrics={"training": training_summary(ckpt)})
    base.update(extra)
    return ModelMetadata(**base)


def training_summary(ckpt: dict) -> dict:
    """What the generator was trained on (n_train lets users see how much real data it saw)."""
    return {"n_train": ckpt.get("n_train"), "class_counts": ckpt.get("class_counts"),
            "epochs": ckpt["epoch"] + 1, "steps": ckpt.get("step"),
            "train_seconds": round(ckpt.get("train_seconds", 0.0), 1)}


def fixed_inputs(z_dim: int, num_classes: int, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` latents per class from numpy seed ``seed`` (the SDK's RNG)."""
    n = per_class * num_classes
    z = np.random.default_rng(seed).standard_normal((n, z_dim)).astype(np.float32)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return z, labels


def quality_gate(fp32_path, int8_path, *, psnr_min: float = 30.0, feature_max: float = 0.10,
                 classifier=None, per_class: int = 8, seed: int = 1234, threads: int = 1) -> dict:
    """Compare INT8 with fp32 on fixed seeds through the SDK (uint8 images, as users get them).

    Passes when PSNR >= ``psnr_min`` dB and, if ``classifier`` (a classifier checkpoint) is
    given, the relative feature distance <= ``feature_max`` (see
    :func:`skulens.training.gan.metrics.relative_feature_distance`)."""
    from skulens.training.gan.metrics import FeatureExtractor, psnr, relative_feature_distance

    opts = GeneratorOptions(num_threads=threads)
    with ImageGenerator.from_path(fp32_path, opts) as g32, ImageGenerator.from_path(int8_path, opts) as g8:
        z, labels = fixed_inputs(g32.z_dim, len(g32.labels), per_class, seed)
        a, b = g32.to_images(g32.run(z, labels)), g8.to_images(g8.run(z, labels))
    per_image = [psnr(x, y) for x, y in zip(a, b)]
    result = {"psnr_db": round(psnr(a, b), 3), "psnr_min_image_db": round(min(per_image), 3),
              "psnr_threshold_db": psnr_min, "n_images": len(a), "seed": seed,
              "per_class": per_class}
    reasons = []
    if result["psnr_db"] < psnr_min:
        reasons.append(f"PSNR {result['psnr_db']:.2f} dB < {psnr_min} dB")
    if classifier:
        extract = FeatureExtractor(classifier)
        f32, l32 = extract(a)
        f8, l8 = extract(b)
        dist = relative_feature_distance(f8, f32)
        result.update(classifier=str(classifier), feature_distance=round(dist, 4),
                      feature_threshold=feature_max,
                      classifier_top1_agreement=float((l32.argmax(1) == l8.argmax(1)).mean()))
        if dist > feature_max:
            reasons.append(f"classifier-feature distance {dist:.3f} > {feature_max}")
    else:
        result["feature_distance"] = None
        result["feature_note"] = "no classifier checkpoint known: feature check skipped (PSNR only)"
    result["passed"] = not reasons
    result["reason"] = "; ".join(reasons) if reasons else "passed"
    return result


def export_generator(config: ExportConfig) -> dict:
    """Export a GAN checkpoint's EMA generator to ``config.out``; with ``int8`` also try INT8.

    Uses the classifier export's config (``data``, ``eval_split``, ``eval_limit`` and the
    classifier-only fields are unused: a generator is checked against its own fp32 output; its
    inputs are latent vectors and labels, so ``input_dtype`` can only be "auto" or "float32")."""
    cfg = config
    if cfg.input_dtype not in ("auto", "float32"):
        raise ValueError(f"input_dtype {cfg.input_dtype!r}: a generator takes float32 latent vectors")
    ckpt = load_checkpoint(cfg.checkpoint)
    gen = generator_from_checkpoint(ckpt)
    gk = ckpt["gen_kwargs"]
    k = gk["num_classes"]
    classifier = cfg.classifier or ckpt.get("classifier")
    if classifier and not Path(classifier).is_file():
        log.warning("classifier %s (from the GAN checkpoint) not found: feature gate skipped", classifier)
        classifier = None
    with Staging(cfg.out) as stage:
        report: dict = {"checkpoint": str(cfg.checkpoint), "kind": "generator", "model": ckpt["model_name"],
                        "opset": cfg.opset, "num_classes": k, "fp32": {"path": str(stage.final(stage.fp32))}}
        z, labels = fixed_inputs(gk["z_dim"], k, 4, seed=0)
        with torch.no_grad():  # reference: the checkpoint's generator as trained (before folding)
            ref = gen(torch.from_numpy(z), torch.from_numpy(labels)).numpy()
        gen = fold_generator_batchnorm(gen)
        example = (torch.zeros(2, gk["z_dim"]), torch.tensor([0, min(1, k - 1)], dtype=torch.int64))
        with warnings.catch_warnings():  # z and label share the batch axis; torch notes it renames one
            warnings.filterwarnings("ignore", message=r".*shares the same shape constraints.*", category=UserWarning)
            torch_to_onnx(gen, example, stage.fp32, input_names=("z", "label"), output_names=("images",),
                          opset=cfg.opset)
        sess = ort.InferenceSession(str(stage.fp32), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"z": z, "label": labels})[0]
        report["parity_max_abs_diff"] = float(np.abs(ref - got).max())
        report["output_shape"] = list(got.shape[1:])
        write_metadata(stage.fp32, generator_metadata(ckpt, stage.fp32, cfg.checkpoint))
        report["fp32"].update(size_bytes=file_size(stage.fp32), sha256=sha256_file(stage.fp32))
        if cfg.int8:
            report["int8"] = _int8(stage, cfg, ckpt, classifier, report["fp32"]["sha256"])
        report["shipped"] = [report["fp32"]["path"]] + ([report["int8"]["path"]] if cfg.int8 and report["int8"]["shipped"] else [])
        stage.commit(report)
    return report


def _int8(stage: Staging, cfg: ExportConfig, ckpt: dict, classifier, parent_sha) -> dict:
    gk = ckpt["gen_kwargs"]
    act = "u8" if cfg.activation_type == "auto" else cfg.activation_type
    per_class = max(1, math.ceil(cfg.calibration_size / gk["num_classes"]))
    z, labels = fixed_inputs(gk["z_dim"], gk["num_classes"], per_class, seed=2)
    quantize_int8(stage.fp32, stage.rejected, {"z": z, "label": labels}, activation_type=act,
                  calibrate_method=cfg.calibrate_method, work_dir=stage.dir)
    qsettings = quantization_settings(act, cfg.calibrate_method, calibration_latents=len(z))
    if cfg.activation_type == "auto":
        qsettings["activation_choice"] = "auto -> u8 (no timing-based choice for two-input generators)"

    def meta(gate):
        return generator_metadata(ckpt, stage.rejected, cfg.checkpoint, quantization=qsettings, parent_sha256=parent_sha,
                                  metrics={"training": training_summary(ckpt), "int8_gate": gate})

    write_metadata(stage.rejected, meta(None))
    gate = quality_gate(stage.fp32, stage.rejected, psnr_min=cfg.psnr_min, feature_max=cfg.feature_max,
                        classifier=classifier)
    write_metadata(stage.rejected, meta(gate))
    result = {"quantization": qsettings, "gate": gate, "shipped": gate["passed"]}
    if gate["passed"]:
        stage.rejected.rename(stage.int8)
        result.update(path=str(stage.final(stage.int8)), reason="INT8 passed the quality gate")
    else:
        result.update(path=str(stage.final(stage.rejected)),
                      reason=f"INT8 not shipped: {gate['reason']}; shipping fp32 only")
        log.warning("INT8 generator rejected (%s); kept for inspection as %s", gate["reason"], result["path"])
    staged = stage.int8 if gate["passed"] else stage.rejected
    result["size_bytes"] = file_size(staged)
    result["sha256"] = sha256_file(staged)
    return result
