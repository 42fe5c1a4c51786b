"""The export orchestrator: checkpoint -> fp32 ONNX (+ INT8) with metadata and a report.

    report = export_classifier("runs/x/best.pt", "model.onnx", int8=True)

writes ``model.onnx`` (fp32), ``model.int8.onnx`` and ``model.report.json``: parity vs
PyTorch, fp32 vs INT8 top-1 on a held-out split, top-1 agreement, sizes, timings.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import sdk
from sdk import ClassifierOptions, DatasetError, ImageClassifier, ModelError, decode_image, load_dataset
from sdk._evaluate import evaluate_samples
from sdk._metadata import ModelMetadata
from sdk._io import atomic_write
from training.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
from training.data import eval_tensors
from training.models import fold_batchnorm

from ._input import onnx_input
from ._onnx import DEFAULT_OPSET, file_size, io_spec, parity, sha256_file, torch_to_onnx, write_metadata
from ._quantize import choose_activation_type, quantize_int8

log = logging.getLogger(__name__)


def int8_path_for(out) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".int8" + out.suffix)


def _provenance(ckpt_path, ckpt: dict | None = None) -> dict:
    """Who made the file from what: versions, the checkpoint's sha256 and, where the training
    started from ImageNet weights or distilled a teacher, which (file and sha256)."""
    out = {"created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "skulens_version": sdk.__version__, "torch_version": str(torch.__version__),
           "onnx_version": onnx.__version__, "onnxruntime_version": ort.__version__,
           "checkpoint_sha256": sha256_file(ckpt_path)}
    for key in ("pretrained", "teacher"):
        if (ckpt or {}).get(key):
            out[key] = ckpt[key]
    return out


def _sample(samples, n, seed=0):
    if len(samples) <= n:
        return list(samples)
    idx = np.random.default_rng(seed).choice(len(samples), size=n, replace=False)
    return [samples[i] for i in sorted(idx)]


def _evaluate(path, samples, dataset, threads):
    """Logits and accuracy of the ONNX model at ``path`` through the SDK (decode -> contract -> ORT)."""
    with ImageClassifier.from_path(path, ClassifierOptions(num_threads=threads, max_batch=64)) as clf:
        return evaluate_samples(clf, samples, dataset)


def export_classifier(checkpoint, out, *, int8: bool = False, data: str | None = None,
                      calibration_size: int = 256, activation_type: str = "auto",
                      calibrate_method: str = "minmax", eval_split: str = "test",
                      eval_limit: int | None = None, opset: int = DEFAULT_OPSET,
                      threads: int = 0, input_dtype: str = "auto") -> dict:
    """Export a classifier checkpoint to ``out`` (fp32) and, with ``int8``, ``<out>.int8.onnx``.

    ``input_dtype``: "uint8" makes both models take uint8 NHWC pixels with the normalisation
    folded into the first convolution (export._input); "auto" does so where that is exact."""
    out = Path(out)
    ckpt = load_checkpoint(checkpoint)
    model = fold_batchnorm(model_from_checkpoint(ckpt))
    train_pre = preprocess_of(ckpt)  # what the torch model takes
    onnx_model, pre = onnx_input(model, train_pre, input_dtype)
    labels = ckpt["labels"]
    data = data or ckpt.get("dataset")
    dataset = None
    try:
        dataset = load_dataset(data) if data else None
    except DatasetError as exc:
        if int8:
            raise DatasetError(f"INT8 calibration needs the training data: {exc}; pass --data") from exc
        log.warning("no dataset for parity/evaluation (%s); using random inputs for parity", exc)
    report: dict = {"checkpoint": str(checkpoint), "model": ckpt["model_name"], "opset": opset,
                    "num_classes": len(labels), "input": {"dtype": pre.dtype, "layout": pre.layout},
                    "fp32": {"path": str(out)}}

    # -- fp32 -------------------------------------------------------------------------------------
    example = torch.zeros(2, *pre.tensor_shape, dtype=torch.uint8 if pre.dtype == "uint8" else torch.float32)
    torch_to_onnx(onnx_model, (example,), out, opset=opset)
    # parity: the trained model on training's tensors vs the ONNX model on the SDK's, same images
    if dataset is not None:
        images = [decode_image(s.path) for s in _sample(dataset.split("train"), 32, seed=1)]
    else:
        h, w = pre.input_size
        images = list(np.random.default_rng(0).integers(0, 256, (8, h, w, 3), dtype=np.uint8))
    report["parity_max_abs_logit_diff"] = parity(model, out, train_pre.apply_batch(images),
                                                 onnx_inputs=pre.apply_batch(images))
    report["parity_inputs"] = "real images" if dataset is not None else "random images"
    base = dict(kind="classifier", labels=tuple(labels), model_name=ckpt["model_name"],
                preprocess=pre, io=io_spec(out), provenance=_provenance(checkpoint, ckpt),
                coarse_labels=tuple(ckpt["coarse_labels"]) if ckpt.get("coarse_labels") else None)
    train_metrics = {k: v for k, v in (ckpt.get("metrics") or {}).items() if k != "eval"}
    if (ckpt.get("metrics") or {}).get("eval"):
        ev = ckpt["metrics"]["eval"]
        train_metrics["torch_eval"] = {k: ev[k] for k in ("split", "n", "top1", "top5", "coarse_top1") if k in ev}
    write_metadata(out, ModelMetadata(metrics={"training": train_metrics}, **base))

    eval_samples = None
    if dataset is not None and dataset.splits.get(eval_split):
        eval_samples = dataset.splits[eval_split][:eval_limit] if eval_limit else dataset.splits[eval_split]
    fp32_logits = None
    if eval_samples:
        fp32_logits, fp32_eval = _evaluate(out, eval_samples, dataset, threads)
        report["fp32"]["eval"] = _summary(fp32_eval, eval_split)
        write_metadata(out, ModelMetadata(metrics={"training": train_metrics,
                                                   "eval": report["fp32"]["eval"]}, **base))
    report["fp32"]["size_bytes"] = file_size(out)
    report["fp32"]["sha256"] = sha256_file(out)

    # -- INT8 -------------------------------------------------------------------------------------
    if int8:
        q_out = int8_path_for(out)
        calib = eval_tensors(_sample(dataset.split("train"), calibration_size, seed=2), pre).numpy()
        timings = None
        if activation_type == "auto":
            activation_type, timings = choose_activation_type(out, calib, calibrate_method=calibrate_method)
        quantize_int8(out, q_out, calib, activation_type=activation_type, calibrate_method=calibrate_method)
        qsettings = {"format": "QDQ", "weights": "s8 per-channel symmetric", "activations": activation_type,
                     "calibrate_method": calibrate_method, "calibration_images": len(calib),
                     "tool": f"onnxruntime.quantization {ort.__version__}"}
        if timings:
            qsettings["activation_check_batch1_1thread"] = timings
        qmeta = dict(base, io=io_spec(q_out), quantization=qsettings, parent_sha256=report["fp32"]["sha256"])
        write_metadata(q_out, ModelMetadata(metrics={"training": train_metrics}, **qmeta))
        report["int8"] = {"path": str(q_out), "quantization": qsettings}
        if eval_samples:
            q_logits, q_eval = _evaluate(q_out, eval_samples, dataset, threads)
            report["int8"]["eval"] = _summary(q_eval, eval_split)
            report["int8"]["top1_agreement_with_fp32"] = float(
                (q_logits.argmax(1) == fp32_logits.argmax(1)).mean())
            report["int8"]["top1_drop_pp"] = round(100 * (report["fp32"]["eval"]["top1"] - q_eval["top1"]), 3)
            write_metadata(q_out, ModelMetadata(metrics={"training": train_metrics,
                                                         "eval": report["int8"]["eval"]}, **qmeta))
        report["int8"]["size_bytes"] = file_size(q_out)
        report["int8"]["sha256"] = sha256_file(q_out)

    report_path = out.with_name(out.stem + ".report.json")
    atomic_write(report_path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    report["report_path"] = str(report_path)
    return report


def checkpoint_kind(checkpoint) -> str:
    """"classifier" or "generator" (ModelError for anything else)."""
    kind = load_checkpoint(checkpoint).get("kind", "classifier")
    if kind not in ("classifier", "generator"):
        raise ModelError(f"{checkpoint}: unknown checkpoint kind {kind!r}")
    return kind


def export_checkpoint(checkpoint, out, **kwargs) -> dict:
    """Export any skulens checkpoint: classifiers with :func:`export_classifier`, GAN
    checkpoints with ``export._gan.export_generator`` (same keyword arguments)."""
    if checkpoint_kind(checkpoint) == "generator":
        from ._gan import export_generator

        return export_generator(checkpoint, out, **kwargs)
    return export_classifier(checkpoint, out, **kwargs)


def _summary(ev: dict, split: str) -> dict:
    keep = ("n", "top1", "top5", "mean_class_top1", "coarse_top1")
    return {"split": split, **{k: ev[k] for k in keep if k in ev}}
