"""The export orchestrator: checkpoint -> fp32 ONNX (+ INT8) with metadata and a report.

    from skulens.export import ExportConfig, export
    report = export(ExportConfig(checkpoint="runs/x/best.pt", out="model.onnx", int8=True))

writes ``model.onnx`` (fp32), ``model.int8.onnx`` and ``model.report.json`` together (or none of
them: see ``_common.Staging``). A classifier export runs these stages, top to bottom:

1. load      the checkpoint, its model (BatchNorm folded), labels, contract and dataset;
2. fp32      embedding output and uint8 input added, torch -> ONNX;
3. parity    the trained model on training's tensors vs the ONNX model on the SDK's, same photos;
4. metadata  labels, contract, provenance, the calibrated "unknown" threshold, fp32 accuracy;
5. INT8      static QDQ quantization, its own metadata and accuracy;
6. gate      INT8 ships only if its top-1 drop vs fp32 is within the allowed drop beyond noise;
7. report    written last, naming every file's sha256; the files are committed together.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from skulens import ClassifierOptions, DatasetError, ImageClassifier, ModelError, PreprocessConfig, decode_image, load_dataset
from skulens.internal import (Dataset, ModelMetadata, evaluate_samples, label_mapping, selective_report, softmax,
                              threshold_for_precision)
from skulens.training.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
from skulens.training.data import eval_tensors
from skulens.training.models import fold_batchnorm

from ._common import Staging, provenance, quantization_settings
from ._embedding import EMBEDDING_OUTPUT, embedding_parity, with_embedding
from ._input import onnx_input
from ._onnx import file_size, io_spec, parity, sha256_file, torch_to_onnx, write_metadata
from ._quantize import choose_activation_type, quantize_int8
from ._tta import with_tta
from .config import ExportConfig

log = logging.getLogger(__name__)


def export(config: ExportConfig) -> dict:
    """Export any skulens checkpoint: classifiers with :func:`export_classifier`, GAN
    checkpoints with ``export_generator``; with ``triton_repo``, also a Triton repository."""
    if checkpoint_kind(config.checkpoint) == "generator":
        if config.triton_repo:
            raise ModelError(f"{config.checkpoint}: --triton-repo is for classifiers, this is a GAN checkpoint")
        from ._gan import export_generator

        return export_generator(config)
    report = export_classifier(config)
    if config.triton_repo:  # the deployed file: INT8 when shipped, else fp32
        from ._triton import write_triton_repo

        shipped = report["int8"] if report.get("int8", {}).get("shipped") else report["fp32"]
        report["triton"] = write_triton_repo(shipped["path"], config.triton_repo, intra_op_threads=config.threads)
    return report


def checkpoint_kind(checkpoint) -> str:
    """"classifier" or "generator" (ModelError for anything else)."""
    kind = load_checkpoint(checkpoint).get("kind", "classifier")
    if kind not in ("classifier", "generator"):
        raise ModelError(f"{checkpoint}: unknown checkpoint kind {kind!r}")
    return kind


@dataclass
class _Source:
    """Stage 1's result: everything the later stages read."""
    ckpt: dict
    model: torch.nn.Module          # BatchNorm folded
    train_pre: PreprocessConfig     # what the torch model takes
    dataset: Dataset | None
    eval_samples: list | None
    train_metrics: dict


def export_classifier(config: ExportConfig) -> dict:
    cfg = config
    src = _load(cfg)
    with Staging(cfg.out) as stage:
        # 2. fp32 graph: the classifier, its embedding output and its input contract
        model = with_tta(src.model, cfg.tta)
        exported, embedding_spec = model, None
        if cfg.embedding:
            fitted = bool(cfg.embedding_dim or cfg.embedding_whiten)  # a PCA or WCCN map learnt on training photos
            fit_on = _sample(src.dataset.split("train"), 1024, seed=3) if fitted else []
            exported, embedding_spec = with_embedding(
                model, cfg.embedding_dim, eval_tensors(fit_on, src.train_pre) if fitted else None, src.train_pre,
                cfg.embedding_colour, cfg.embedding_whiten, [s.label for s in fit_on])
        onnx_model, pre = onnx_input(exported, src.train_pre, cfg.input_dtype)
        example = torch.zeros(2, *pre.tensor_shape, dtype=torch.uint8 if pre.dtype == "uint8" else torch.float32)
        torch_to_onnx(onnx_model, (example,), stage.fp32, opset=cfg.opset,
                      output_names=("logits", EMBEDDING_OUTPUT) if embedding_spec else ("logits",))
        report: dict = {"checkpoint": str(cfg.checkpoint), "model": src.ckpt["model_name"], "opset": cfg.opset,
                        "num_classes": len(src.ckpt["labels"]), "input": {"dtype": pre.dtype, "layout": pre.layout},
                        "fp32": {"path": str(stage.final(stage.fp32))}}

        # 3. parity: same photos, training's tensors into torch, the SDK's into ONNX
        report.update(_parity(src, model, exported, embedding_spec, pre, stage.fp32))

        # 4. metadata, the "unknown" threshold and fp32 accuracy (through the SDK, so the model
        #    must carry its metadata before it is evaluated)
        base = dict(kind="classifier", labels=tuple(src.ckpt["labels"]), model_name=src.ckpt["model_name"],
                    preprocess=pre, provenance=_provenance(cfg, src),
                    coarse_labels=tuple(src.ckpt["coarse_labels"]) if src.ckpt.get("coarse_labels") else None,
                    embedding=embedding_spec)
        fp32_logits = _describe(stage.fp32, base, src, cfg, report["fp32"])

        # 5. INT8, 6. its gate
        if cfg.int8:
            report["int8"] = _int8(stage, base, src, cfg, fp32_logits, report["fp32"])

        # 7. the report, and every file committed together
        stage.commit(report)
    return report


def _load(cfg: ExportConfig) -> _Source:
    ckpt = load_checkpoint(cfg.checkpoint)
    data = cfg.data or ckpt.get("dataset")
    dataset = None
    try:
        dataset = load_dataset(data) if data else None
    except DatasetError as exc:
        if cfg.int8 or cfg.embedding_dim or cfg.embedding_whiten:
            raise DatasetError(f"INT8 calibration and embedding projection need the training data: {exc}; "
                               "pass --data") from exc
        log.warning("no dataset for parity/evaluation (%s); using random inputs for parity", exc)
    eval_samples = None
    if dataset is not None and dataset.splits.get(cfg.eval_split):
        split = dataset.splits[cfg.eval_split]
        eval_samples = split[:cfg.eval_limit] if cfg.eval_limit else split
    train_metrics = {k: v for k, v in (ckpt.get("metrics") or {}).items() if k != "eval"}
    if (ckpt.get("metrics") or {}).get("eval"):
        ev = ckpt["metrics"]["eval"]
        keep = ("split", "n", "top1", "top5", "coarse_top1", "coarse_top1_summed")
        train_metrics["torch_eval"] = {k: ev[k] for k in keep if k in ev}
    model, pre = fold_batchnorm(model_from_checkpoint(ckpt)), preprocess_of(ckpt)
    if cfg.input_size and (cfg.input_size, cfg.input_size) != pre.input_size:
        pre = _resized_input(model, pre, cfg.input_size, cfg.checkpoint)
    return _Source(ckpt=ckpt, model=model, train_pre=pre, dataset=dataset, eval_samples=eval_samples,
                   train_metrics=train_metrics)


def _resized_input(model, pre: PreprocessConfig, size: int, checkpoint) -> PreprocessConfig:
    """The contract at another input size; ModelError for a model that cannot take it (a head
    that reads a fixed number of features, not a pooled vector)."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, pre.channels, size, size))
    except RuntimeError as exc:
        raise ModelError(f"{checkpoint}: this {type(model).__name__} takes only its trained input size "
                         f"{pre.input_size[0]}x{pre.input_size[1]}, not {size}x{size} "
                         f"({str(exc).splitlines()[0][:120]})") from exc
    return dataclasses.replace(pre, input_size=(size, size))


def _provenance(cfg: ExportConfig, src: _Source) -> dict:
    """provenance() plus how the export changed the model as trained: its input size, and the
    test-time augmentation in the graph."""
    out = provenance(cfg.checkpoint, src.ckpt)
    trained = tuple(preprocess_of(src.ckpt).input_size)
    if tuple(src.train_pre.input_size) != trained:
        out["trained_input_size"] = list(trained)
    if cfg.tta != "none":
        out["tta"] = cfg.tta
    return out


def _parity(src: _Source, reference, exported, embedding_spec, pre: PreprocessConfig, path) -> dict:
    """The torch ``reference`` (logits) and ``exported`` (with the embedding) vs the ONNX file."""
    if src.dataset is not None:
        images = [decode_image(s.path) for s in _sample(src.dataset.split("train"), 32, seed=1)]
    else:
        h, w = pre.input_size
        images = list(np.random.default_rng(0).integers(0, 256, (8, h, w, 3), dtype=np.uint8))
    train_x, onnx_x = src.train_pre.apply_batch(images), pre.apply_batch(images)
    out = {"parity_max_abs_logit_diff": parity(reference, path, train_x, onnx_inputs=onnx_x)}
    if embedding_spec:
        out["parity_max_abs_embedding_diff"] = embedding_parity(exported, path, train_x, onnx_x)
        out["embedding"] = embedding_spec
    out["parity_inputs"] = "real images" if src.dataset is not None else "random images"
    return out


def _describe(path, meta: dict, src: _Source, cfg: ExportConfig, entry: dict, **extra) -> np.ndarray | None:
    """Write the model's metadata, calibrate its "unknown" threshold and measure it on the eval
    split; fills ``entry`` (the model's part of the report) and returns the eval logits."""
    meta = dict(meta, io=io_spec(path), **extra)
    write_metadata(path, ModelMetadata(metrics={"training": src.train_metrics}, **meta))
    unknown = _calibrate_unknown(path, meta["labels"], src.dataset, cfg.threads, cfg.unknown_precision)
    if unknown and (src.ckpt.get("train_config") or {}).get("train_on_val"):
        unknown["held_out"] = False  # the checkpoint trained on these photos: the threshold is optimistic
        log.warning("%s: the 'unknown' threshold is calibrated on val photos the model trained on "
                    "(--train-on-val); it accepts more wrong answers than it reports", Path(path).name)
    metrics, logits = {"training": src.train_metrics}, None
    if src.eval_samples:
        logits, ev = _evaluate(path, src.eval_samples, src.dataset, cfg.threads)
        entry["eval"] = metrics["eval"] = _summary(ev, cfg.eval_split)
    write_metadata(path, ModelMetadata(metrics=metrics, unknown=unknown, **meta))
    entry.update(unknown=unknown, size_bytes=file_size(path), sha256=sha256_file(path))
    return logits


def _int8(stage: Staging, base: dict, src: _Source, cfg: ExportConfig, fp32_logits, fp32: dict) -> dict:
    calib = eval_tensors(_sample(src.dataset.split("train"), cfg.calibration_size, seed=2), base["preprocess"]).numpy()
    activation_type, timings = cfg.activation_type, None
    float_colour = bool((base["embedding"] or {}).get("colour"))  # export._colour stays float
    if activation_type == "auto":
        activation_type, timings = choose_activation_type(stage.fp32, calib, calibrate_method=cfg.calibrate_method,
                                                          work_dir=stage.dir, float_pixel_arithmetic=float_colour)
    quantize_int8(stage.fp32, stage.rejected, calib, activation_type=activation_type,
                  calibrate_method=cfg.calibrate_method, work_dir=stage.dir, float_pixel_arithmetic=float_colour)
    qsettings = quantization_settings(activation_type, cfg.calibrate_method, calibration_images=len(calib),
                                      **({"activation_check_batch1_1thread": timings} if timings else {}))
    entry: dict = {"quantization": qsettings}
    q_logits = _describe(stage.rejected, base, src, cfg, entry, quantization=qsettings, parent_sha256=fp32["sha256"])
    if q_logits is not None:
        entry["top1_agreement_with_fp32"] = float((q_logits.argmax(1) == fp32_logits.argmax(1)).mean())
        entry["top1_drop_pp"] = round(100 * (fp32["eval"]["top1"] - entry["eval"]["top1"]), 3)
    entry["gate"] = gate = _gate(q_logits, fp32_logits, src, cfg)
    entry["shipped"] = gate["passed"]
    if gate["passed"]:
        stage.rejected.rename(stage.int8)
        entry["path"] = str(stage.final(stage.int8))
    else:
        entry["path"] = str(stage.final(stage.rejected))
        log.warning("INT8 classifier rejected (%s); kept for inspection as %s", gate["reason"], entry["path"])
    return entry


def _gate(q_logits, fp32_logits, src: _Source, cfg: ExportConfig) -> dict:
    """INT8 fails when its top-1 drop vs fp32 on the eval split exceeds ``int8_max_drop_pp`` by
    more than two standard errors of the paired difference (sqrt(discordant photos) / n): a
    small eval split cannot reject a model on one or two photos."""
    if q_logits is None:
        return {"passed": True, "reason": "no eval split: not measured", "max_drop_pp": cfg.int8_max_drop_pp}
    targets = label_mapping(src.ckpt["labels"], src.dataset)[np.array([s.label for s in src.eval_samples])]
    q_right, f_right = q_logits.argmax(1) == targets, fp32_logits.argmax(1) == targets
    n = len(targets)
    drop_pp = 100 * (f_right.mean() - q_right.mean())
    noise_pp = 200 * math.sqrt(int((q_right != f_right).sum())) / n
    passed = drop_pp <= cfg.int8_max_drop_pp + noise_pp
    reason = (f"top-1 drop {drop_pp:.2f} pp on {n} photos is within {cfg.int8_max_drop_pp} pp + noise {noise_pp:.2f} pp"
              if passed else f"top-1 drop {drop_pp:.2f} pp on {n} photos exceeds {cfg.int8_max_drop_pp} pp + noise "
                             f"{noise_pp:.2f} pp")
    return {"passed": bool(passed), "reason": reason, "split": cfg.eval_split, "n": n, "drop_pp": round(drop_pp, 3),
            "noise_pp": round(noise_pp, 3), "max_drop_pp": cfg.int8_max_drop_pp}


def _sample(samples, n, seed=0):
    if len(samples) <= n:
        return list(samples)
    idx = np.random.default_rng(seed).choice(len(samples), size=n, replace=False)
    return [samples[i] for i in sorted(idx)]


def _evaluate(path, samples, dataset, threads):
    """Logits and accuracy of the ONNX model at ``path`` through the SDK (decode -> contract -> ORT)."""
    with ImageClassifier.from_path(path, ClassifierOptions(num_threads=threads, max_batch=64)) as clf:
        return evaluate_samples(clf, samples, dataset)


def _calibrate_unknown(path, labels, dataset, threads, target: float) -> dict | None:
    """The softmax threshold for "unknown" chosen on the validation split for ``target``
    precision (of the accepted answers), or None without a validation split / target."""
    if not target or dataset is None or not dataset.splits.get("val"):
        return None
    val = dataset.splits["val"]
    logits, _ = _evaluate(path, val, dataset, threads)
    targets = label_mapping(labels, dataset)[np.array([s.label for s in val])]
    probs = softmax(logits)
    score, correct = probs.max(1), probs.argmax(1) == targets
    t = threshold_for_precision(score, correct, target)
    if t is None:
        log.warning("%s: no softmax threshold reaches %.0f %% precision on the validation split; "
                    "results are never marked unknown", Path(path).name, 100 * target)
        return None
    rep = selective_report(score, correct, t)
    return {"score": "softmax", "threshold": round(t, 6), "target_precision": target, "split": "val",
            "val_n": rep["n"], "val_coverage": round(rep["coverage"], 4), "val_precision": round(rep["precision"], 4)}


def _summary(ev: dict, split: str) -> dict:
    keep = ("n", "top1", "top5", "mean_class_top1", "coarse_top1", "coarse_top1_summed")
    return {"split": split, **{k: ev[k] for k in keep if k in ev}}

