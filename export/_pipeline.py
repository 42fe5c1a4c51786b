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

import skulens
from skulens import ClassifierOptions, DatasetError, ImageClassifier, ModelError, decode_image, load_dataset
from skulens.internal import softmax
from skulens.internal import evaluate_samples, label_mapping
from skulens.internal import ModelMetadata
from skulens.internal import atomic_write, int8_path_for, report_path_for
from skulens.internal import selective_report, threshold_for_precision
from skulens.training.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
from skulens.training.data import eval_tensors
from skulens.training.models import fold_batchnorm

from ._embedding import EMBEDDING_OUTPUT, embedding_parity, with_embedding
from ._input import onnx_input
from ._onnx import DEFAULT_OPSET, file_size, io_spec, parity, sha256_file, torch_to_onnx, write_metadata
from ._quantize import choose_activation_type, quantize_int8

log = logging.getLogger(__name__)


def _provenance(ckpt_path, ckpt: dict | None = None) -> dict:
    """Who made the file from what: versions, the checkpoint's sha256 and, where the training
    started from ImageNet weights or distilled a teacher, which (file and sha256)."""
    out = {"created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "skulens_version": skulens.__version__, "torch_version": str(torch.__version__),
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
                      threads: int = 0, input_dtype: str = "auto", embedding: bool = True,
                      embedding_dim: int = 0, unknown_precision: float = 0.95) -> dict:
    """Export a classifier checkpoint to ``out`` (fp32) and, with ``int8``, ``<out>.int8.onnx``.

    ``input_dtype``: "uint8" makes both models take uint8 NHWC pixels with the normalisation
    folded into the first convolution (export._input); "auto" does so where that is exact.
    ``embedding``: a second output, the L2-normalised pooled features (``embedding_dim`` > 0:
    projected to that many principal directions of the training images; export._embedding).
    ``unknown_precision``: the softmax threshold below which a result is "unknown" is chosen on
    the validation split for this precision (0: none)."""
    out = Path(out)
    ckpt = load_checkpoint(checkpoint)
    model = fold_batchnorm(model_from_checkpoint(ckpt))
    train_pre = preprocess_of(ckpt)  # what the torch model takes
    labels = ckpt["labels"]
    data = data or ckpt.get("dataset")
    dataset = None
    try:
        dataset = load_dataset(data) if data else None
    except DatasetError as exc:
        if int8 or embedding_dim:
            raise DatasetError(f"INT8 calibration and embedding projection need the training data: {exc}; "
                               "pass --data") from exc
        log.warning("no dataset for parity/evaluation (%s); using random inputs for parity", exc)
    exported, embedding_spec = model, None
    if embedding:
        pca_tensors = eval_tensors(_sample(dataset.split("train"), 1024, seed=3), train_pre) if embedding_dim else None
        exported, embedding_spec = with_embedding(model, embedding_dim, pca_tensors)
    onnx_model, pre = onnx_input(exported, train_pre, input_dtype)
    report: dict = {"checkpoint": str(checkpoint), "model": ckpt["model_name"], "opset": opset,
                    "num_classes": len(labels), "input": {"dtype": pre.dtype, "layout": pre.layout},
                    "fp32": {"path": str(out)}}

    # -- fp32 -------------------------------------------------------------------------------------
    example = torch.zeros(2, *pre.tensor_shape, dtype=torch.uint8 if pre.dtype == "uint8" else torch.float32)
    torch_to_onnx(onnx_model, (example,), out, opset=opset,
                  output_names=("logits", EMBEDDING_OUTPUT) if embedding_spec else ("logits",))
    # parity: the trained model on training's tensors vs the ONNX model on the SDK's, same images
    if dataset is not None:
        images = [decode_image(s.path) for s in _sample(dataset.split("train"), 32, seed=1)]
    else:
        h, w = pre.input_size
        images = list(np.random.default_rng(0).integers(0, 256, (8, h, w, 3), dtype=np.uint8))
    report["parity_max_abs_logit_diff"] = parity(model, out, train_pre.apply_batch(images),
                                                 onnx_inputs=pre.apply_batch(images))
    if embedding_spec:
        report["parity_max_abs_embedding_diff"] = embedding_parity(
            exported, out, train_pre.apply_batch(images), pre.apply_batch(images))
        report["embedding"] = embedding_spec
    report["parity_inputs"] = "real images" if dataset is not None else "random images"
    base = dict(kind="classifier", labels=tuple(labels), model_name=ckpt["model_name"],
                preprocess=pre, io=io_spec(out), provenance=_provenance(checkpoint, ckpt),
                coarse_labels=tuple(ckpt["coarse_labels"]) if ckpt.get("coarse_labels") else None,
                embedding=embedding_spec)
    train_metrics = {k: v for k, v in (ckpt.get("metrics") or {}).items() if k != "eval"}
    if (ckpt.get("metrics") or {}).get("eval"):
        ev = ckpt["metrics"]["eval"]
        train_metrics["torch_eval"] = {k: ev[k] for k in ("split", "n", "top1", "top5", "coarse_top1") if k in ev}
    write_metadata(out, ModelMetadata(metrics={"training": train_metrics}, **base))
    unknown = _calibrate_unknown(out, labels, dataset, threads, unknown_precision)
    write_metadata(out, ModelMetadata(metrics={"training": train_metrics}, unknown=unknown, **base))

    eval_samples = None
    if dataset is not None and dataset.splits.get(eval_split):
        eval_samples = dataset.splits[eval_split][:eval_limit] if eval_limit else dataset.splits[eval_split]
    fp32_logits = None
    if eval_samples:
        fp32_logits, fp32_eval = _evaluate(out, eval_samples, dataset, threads)
        report["fp32"]["eval"] = _summary(fp32_eval, eval_split)
        write_metadata(out, ModelMetadata(metrics={"training": train_metrics,
                                                   "eval": report["fp32"]["eval"]}, unknown=unknown, **base))
    report["fp32"]["unknown"] = unknown
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
        qmeta["unknown"] = _calibrate_unknown(q_out, labels, dataset, threads, unknown_precision)
        write_metadata(q_out, ModelMetadata(metrics={"training": train_metrics}, **qmeta))
        report["int8"] = {"path": str(q_out), "quantization": qsettings, "unknown": qmeta["unknown"]}
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

    report_path = report_path_for(out)
    atomic_write(report_path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    report["report_path"] = str(report_path)
    return report


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
                    "results are never marked unknown", path, 100 * target)
        return None
    rep = selective_report(score, correct, t)
    return {"score": "softmax", "threshold": round(t, 6), "target_precision": target, "split": "val",
            "val_n": rep["n"], "val_coverage": round(rep["coverage"], 4), "val_precision": round(rep["precision"], 4)}


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

        for key in ("embedding", "embedding_dim", "unknown_precision"):  # classifier-only options
            kwargs.pop(key, None)
        return export_generator(checkpoint, out, **kwargs)
    return export_classifier(checkpoint, out, **kwargs)


def _summary(ev: dict, split: str) -> dict:
    keep = ("n", "top1", "top5", "mean_class_top1", "coarse_top1")
    return {"split": split, **{k: ev[k] for k in keep if k in ev}}
