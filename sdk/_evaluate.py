"""Accuracy of a classifier on a dataset split (torch-free; used by `skulens eval` and export).

``evaluate`` returns top-1/top-5, per-class precision/recall/F1, mean per-class accuracy and
(where fine classes have coarse groups) coarse top-1; with ``details=True`` also every
prediction and the confusion matrix, which ``write_eval_report`` turns into CSV, Markdown, a
PNG drawn with OpenCV (no matplotlib in a runtime-only install) and a folder of the
misclassified photos.
"""
from __future__ import annotations

import csv
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np

from ._classifier import coarse_groups, softmax
from ._dataset import Dataset
from ._errors import DatasetError
from ._io import atomic_write_bytes, atomic_write_text


def label_mapping(model_labels, dataset: Dataset) -> np.ndarray:
    """Dataset class id -> model output index, matched by label name."""
    index = {name: i for i, name in enumerate(model_labels)}
    missing = [c for c in dataset.classes if c not in index]
    if missing:
        raise DatasetError(f"{dataset.root}: {len(missing)} dataset classes are unknown to the model "
                           f"(e.g. {missing[:5]}); evaluate on the classes the model was trained on")
    return np.array([index[c] for c in dataset.classes], dtype=np.int64)


def confusion_matrix(targets: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] (int64, num_classes x num_classes)."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(targets, np.int64), np.asarray(pred, np.int64)), 1)
    return m


def accuracy_report(logits: np.ndarray, targets: np.ndarray, labels, *,
                    coarse_of: np.ndarray | None = None) -> dict:
    """Top-1/top-5, per-class precision/recall/F1 (and coarse top-1) from logits [N, K] and
    targets [N] in model indices.

    ``per_class`` holds the classes present in ``targets``: ``n`` photos, ``top1`` (= recall),
    ``precision`` (0 when the class is never predicted), ``f1`` and ``predicted`` (how often it
    was the answer). ``mean_class_top1`` and ``macro_f1`` average over those classes.
    ``coarse_of[k]`` is the coarse group id of model class k (or -1 when unknown); the coarse
    answer is the group of the top-1 class (``coarse_top1``), and ``coarse_top1_summed`` scores
    the group with the highest summed softmax probability instead.
    """
    n, k = logits.shape
    if n == 0:
        raise DatasetError("no samples to evaluate")
    pred = logits.argmax(axis=1)
    topk = np.argsort(-logits, axis=1)[:, :min(5, k)]
    top1 = float((pred == targets).mean())
    top5 = float((topk == targets[:, None]).any(axis=1).mean())
    predicted = np.bincount(pred, minlength=k)
    per_class = {}
    for c in np.unique(targets):
        m = targets == c
        tp = int((pred[m] == c).sum())
        recall = tp / int(m.sum())
        precision = tp / int(predicted[c]) if predicted[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[labels[c]] = {"n": int(m.sum()), "top1": float(recall), "precision": float(precision),
                                "recall": float(recall), "f1": float(f1), "predicted": int(predicted[c])}
    report = {"n": int(n), "top1": top1, "top5": top5,
              "mean_class_top1": float(np.mean([v["top1"] for v in per_class.values()])),
              "macro_precision": float(np.mean([v["precision"] for v in per_class.values()])),
              "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])),
              "per_class": per_class}
    if coarse_of is not None:
        valid = coarse_of[targets] >= 0
        if valid.any():
            # the coarse answer: the group of the top-1 class (as ImageClassifier reports it);
            # "summed": the group with the highest total probability, for comparison
            truth = coarse_of[targets[valid]]
            report["coarse_top1"] = float((coarse_of[pred[valid]] == truth).mean())
            summed = group_probabilities(softmax(logits[valid].astype(np.float64)), coarse_of).argmax(axis=1)
            report["coarse_top1_summed"] = float((summed == truth).mean())
    return report


def coarse_index(model_labels, dataset: Dataset, model_coarse_labels=None) -> np.ndarray | None:
    """Coarse id of each model class from the dataset's fine->coarse map, else from the model's
    own coarse labels (its metadata), else None."""
    if dataset.fine_to_coarse:
        by_name = {dataset.classes[f]: c for f, c in dataset.fine_to_coarse.items()}
        return np.array([by_name.get(name, -1) for name in model_labels], dtype=np.int64)
    if model_coarse_labels and len(model_coarse_labels) == len(model_labels):
        return coarse_groups(model_coarse_labels)[1]
    return None


def group_probabilities(probs: np.ndarray, group_of: np.ndarray) -> np.ndarray:
    """[N, G] total probability of each coarse group: the sum over its classes of ``probs`` [N, K]
    (``group_of[k]`` = class k's group, -1: none, left out)."""
    n_groups = int(group_of.max()) + 1 if group_of.size else 0
    out = np.zeros((probs.shape[0], max(n_groups, 0)), dtype=np.float64)
    keep = group_of >= 0
    np.add.at(out.T, group_of[keep], probs[:, keep].T.astype(np.float64))
    return out


def _model_coarse_labels(classifier):
    meta = getattr(classifier, "metadata", None)
    return getattr(meta, "coarse_labels", None)


def evaluate_samples(classifier, samples, dataset: Dataset) -> tuple[np.ndarray, dict]:
    """(logits, accuracy report) of ``classifier`` (an ImageClassifier) on ``samples`` of ``dataset``."""
    if not samples:
        raise DatasetError(f"{dataset.root}: no samples to evaluate")
    targets = label_mapping(classifier.labels, dataset)[np.array([s.label for s in samples])]
    logits = classifier.logits_batch([s.path for s in samples])
    return logits, accuracy_report(logits, targets, classifier.labels,
                                   coarse_of=coarse_index(classifier.labels, dataset,
                                                          _model_coarse_labels(classifier)))


def evaluate(classifier, dataset: Dataset, split: str = "test", limit: int | None = None, *,
             details: bool = False) -> dict:
    """Run ``classifier`` (an ImageClassifier) over a split and report its accuracy.

    ``details=True`` adds ``report["details"]``: every photo's path, true and predicted label
    and the softmax score of the prediction, and the confusion matrix over the classes that
    occur (as truth or answer), for :func:`write_eval_report`.
    """
    samples = dataset.split(split)
    samples = samples[:limit] if limit else samples
    logits, report = evaluate_samples(classifier, samples, dataset)
    report = {**report, "split": split}
    if details:
        labels = list(classifier.labels)
        targets = label_mapping(labels, dataset)[np.array([s.label for s in samples])]
        pred = logits.argmax(axis=1)
        z = logits - logits.max(axis=1, keepdims=True)
        score = np.exp(z[np.arange(len(pred)), pred]) / np.exp(z).sum(axis=1)
        used = np.union1d(targets, pred)  # model order
        pos = {int(c): i for i, c in enumerate(used)}
        matrix = confusion_matrix([pos[int(t)] for t in targets], [pos[int(p)] for p in pred], len(used))
        report["details"] = {
            "labels": [labels[c] for c in used], "confusion": matrix.tolist(),
            "predictions": [{"path": str(s.path), "true": labels[t], "pred": labels[p], "score": float(sc)}
                            for s, t, p, sc in zip(samples, targets, pred, score)]}
    return report


# -- writing an evaluation ----------------------------------------------------------------------
def _csv(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _safe_name(label: str, limit: int = 60) -> str:
    name = re.sub(r"[^\w.+-]+", "-", str(label), flags=re.UNICODE).strip("-.") or "label"
    return name[:limit]


def eval_summary_line(report: dict, name: str = "model") -> str:
    """One line: top-1, top-5, mean per-class accuracy, macro F1 and coarse top-1 (if any)."""
    line = (f"{name} on {report.get('split', '?')} (n={report['n']}): top-1 {report['top1']:.4f}  "
            f"top-5 {report['top5']:.4f}  mean per-class {report['mean_class_top1']:.4f}")
    if "macro_f1" in report:
        line += f"  macro F1 {report['macro_f1']:.4f}"
    if "coarse_top1" in report:
        line += f"  coarse top-1 {report['coarse_top1']:.4f}"
        if "coarse_top1_summed" in report:
            line += f" (most probable group: {report['coarse_top1_summed']:.4f})"
    return line


def write_eval_report(report: dict, out, *, model: str = "model", misclassified: bool = True) -> list[Path]:
    """Write an ``evaluate(..., details=True)`` report to folder ``out``: ``per_class.csv`` and
    ``per_class.md`` (precision/recall/F1 per class), ``confusion.csv`` and ``confusion.png``
    (counts), ``misclassified.csv`` and a ``misclassified/`` folder with a copy of every wrongly
    classified photo named ``<true>_as_<pred>__<file>``. Returns the paths written."""
    if "details" not in report:
        raise ValueError("write_eval_report needs evaluate(..., details=True)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det, per_class = report["details"], report["per_class"]
    written = []
    rows = [["label", "n", "precision", "recall", "f1", "predicted"]]
    rows += [[label, v["n"], f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}", v["predicted"]]
             for label, v in per_class.items()]
    written.append(atomic_write_text(out / "per_class.csv", _csv(rows)))

    md = [f"# {_md_cell(model)} on {report.get('split', '?')}", "",
          f"n = {report['n']}, top-1 {report['top1']:.4f}, top-5 {report['top5']:.4f}, mean per-class accuracy "
          f"{report['mean_class_top1']:.4f}, macro precision {report['macro_precision']:.4f}, macro F1 "
          f"{report['macro_f1']:.4f}"
          + (f", coarse top-1 {report['coarse_top1']:.4f}" if "coarse_top1" in report else "")
          + (f" (most probable group: {report['coarse_top1_summed']:.4f})"
             if "coarse_top1_summed" in report else ""),
          "", "Classes by F1, worst first (recall = per-class top-1; predicted = how often it was the answer).", "",
          "| class | n | precision | recall | F1 | predicted |", "|---|--:|--:|--:|--:|--:|"]
    for label, v in sorted(per_class.items(), key=lambda kv: (kv[1]["f1"], kv[0])):
        md.append(f"| {_md_cell(label)} | {v['n']} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} "
                  f"| {v['predicted']} |")
    md.append(f"| **macro average** | {report['n']} | {report['macro_precision']:.3f} | "
              f"{report['mean_class_top1']:.3f} | {report['macro_f1']:.3f} | |")
    written.append(atomic_write_text(out / "per_class.md", "\n".join(md) + "\n"))

    labels, matrix = det["labels"], np.array(det["confusion"], dtype=np.int64)
    written.append(atomic_write_text(out / "confusion.csv", _csv(
        [["true \\ predicted", *labels]] + [[label, *map(int, row)] for label, row in zip(labels, matrix)])))
    title = f"{model} on {report.get('split', '?')} (n={report['n']}, top-1 {report['top1']:.1%})"
    written.append(write_confusion_png(out / "confusion.png", matrix, labels, title))

    wrong = [p for p in det["predictions"] if p["true"] != p["pred"]]
    written.append(atomic_write_text(out / "misclassified.csv", _csv(
        [["path", "true", "pred", "score", "copy"]] +
        [[p["path"], p["true"], p["pred"], f"{p['score']:.4f}", ""] for p in wrong])))
    if misclassified:
        folder = out / "misclassified"
        if folder.is_dir():  # a fresh set: stale copies of an earlier run would mislead
            shutil.rmtree(folder)
        folder.mkdir()
        copies = []
        for p in wrong:
            src = Path(p["path"])
            name = f"{_safe_name(p['true'])}_as_{_safe_name(p['pred'])}__{src.name}"
            dst, i = folder / name, 1
            while dst.exists():
                i += 1
                dst = folder / f"{Path(name).stem}_{i}{src.suffix}"
            try:
                shutil.copyfile(src, dst)
                copies.append(str(dst.relative_to(out)))
            except OSError:  # a photo that is not a plain readable file (in-memory, removed since)
                copies.append("")
        written[-1] = atomic_write_text(out / "misclassified.csv", _csv(
            [["path", "true", "pred", "score", "copy"]] +
            [[p["path"], p["true"], p["pred"], f"{p['score']:.4f}", c] for p, c in zip(wrong, copies)]))
        written.append(folder)
    return written


def _text_size(text: str, scale: float, thickness: int = 1) -> tuple[int, int]:
    import cv2

    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    return w, h + base


def _short(label: str, n: int = 28) -> str:
    return label if len(label) <= n else label[:n - 1] + "~"


def render_confusion(matrix: np.ndarray, labels, title: str) -> np.ndarray:
    """A BGR image of confusion counts [true, pred]: viridis cells with their (non-zero)
    counts, class names on both axes, a colour bar and ``title``."""
    import cv2

    font, aa = cv2.FONT_HERSHEY_SIMPLEX, cv2.LINE_AA
    matrix = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    vmax = max(1, int(matrix.max()))
    digits = len(str(vmax))
    cell = int(np.clip(1100 // max(k, 1), 18 + 6 * max(0, digits - 2), 56))
    count_scale = min(0.5, cell / 48)
    label_scale = float(np.clip(cell / 40, 0.32, 0.5))
    names = [_short(str(x)) for x in labels]
    label_w = max(_text_size(s, label_scale)[0] for s in names) + 10
    label_h = _text_size("Ag", label_scale)[1]
    title_scale = 0.6
    tw, th = _text_size(title, title_scale, 1)
    top = th + 20 + label_w + 8            # title, then the rotated column names
    left = label_h + 14 + label_w           # the "true" axis title, then the row names
    grid = cell * k
    bar_w, bar_gap, tick_w = 18, 24, _text_size(str(vmax), 0.4)[0] + 12
    width = max(left + grid + bar_gap + bar_w + tick_w + 10, tw + 20)
    height = top + grid + label_h + 24
    img = np.full((height, width, 3), 255, np.uint8)

    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_VIRIDIS)[:, 0]
    level = np.round(255 * matrix / vmax).astype(np.int64)
    for i in range(k):
        for j in range(k):
            color = lut[level[i, j]]
            x0, y0 = left + j * cell, top + i * cell
            img[y0:y0 + cell, x0:x0 + cell] = color
            if matrix[i, j]:
                text = str(int(matrix[i, j]))
                w, h = _text_size(text, count_scale)
                ink = (0, 0, 0) if float(color @ np.array([0.114, 0.587, 0.299])) > 140 else (255, 255, 255)
                cv2.putText(img, text, (x0 + (cell - w) // 2, y0 + (cell + h) // 2 - 2), font, count_scale, ink, 1, aa)
    for t in range(k + 1):  # cell borders, the diagonal outlined
        cv2.line(img, (left, top + t * cell), (left + grid, top + t * cell), (255, 255, 255), 1)
        cv2.line(img, (left + t * cell, top), (left + t * cell, top + grid), (255, 255, 255), 1)
    for i in range(k):
        cv2.rectangle(img, (left + i * cell, top + i * cell), (left + (i + 1) * cell, top + (i + 1) * cell),
                      (40, 40, 220), 1)

    for i, s in enumerate(names):  # row names, right-aligned
        w, h = _text_size(s, label_scale)
        cv2.putText(img, s, (left - w - 6, top + i * cell + (cell + h) // 2 - 3), font, label_scale, (0, 0, 0), 1, aa)
    strip = np.full((label_h + 4, label_w, 3), 255, np.uint8)  # column names: drawn flat, rotated 90 degrees
    for j, s in enumerate(names):
        strip[:] = 255
        cv2.putText(strip, s, (4, label_h - 2), font, label_scale, (0, 0, 0), 1, aa)
        rot = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)  # reads bottom to top
        x0 = left + j * cell + (cell - rot.shape[1]) // 2
        y0 = top - 6 - rot.shape[0]
        if x0 >= 0:
            area = img[y0:y0 + rot.shape[0], x0:x0 + rot.shape[1]]
            area[:] = np.minimum(area, rot)

    cv2.putText(img, title, (10, th + 6), font, title_scale, (0, 0, 0), 1, aa)
    w, _ = _text_size("predicted", 0.5)
    cv2.putText(img, "predicted", (left + (grid - w) // 2, top + grid + label_h + 14), font, 0.5, (0, 0, 0), 1, aa)
    axis = np.full((label_h + 8, _text_size("true", 0.5)[0] + 8, 3), 255, np.uint8)
    cv2.putText(axis, "true", (4, label_h + 2), font, 0.5, (0, 0, 0), 1, aa)
    axis = cv2.rotate(axis, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y0 = top + (grid - axis.shape[0]) // 2
    if y0 >= 0:
        img[y0:y0 + axis.shape[0], 2:2 + axis.shape[1]] = axis

    bx = left + grid + bar_gap  # colour bar: count 0 at the bottom, the largest at the top
    ramp = lut[np.round(np.linspace(255, 0, grid)).astype(np.int64)]
    img[top:top + grid, bx:bx + bar_w] = ramp[:, None, :]
    cv2.rectangle(img, (bx, top), (bx + bar_w - 1, top + grid - 1), (0, 0, 0), 1)
    ticks = sorted({0, vmax // 2, vmax}) if vmax > 1 else [0, 1]
    for v in ticks:
        y = top + int(round((grid - 1) * (1 - v / vmax)))
        cv2.line(img, (bx + bar_w, y), (bx + bar_w + 4, y), (0, 0, 0), 1)
        _, h = _text_size(str(v), 0.4)
        cv2.putText(img, str(v), (bx + bar_w + 6, min(max(y + h // 2 - 2, top + h), top + grid)), font, 0.4,
                    (0, 0, 0), 1, aa)
    w, _ = _text_size("count", 0.4)
    cv2.putText(img, "count", (bx + (bar_w - w) // 2, top - 6), font, 0.4, (0, 0, 0), 1, aa)
    return img


def write_confusion_png(path, matrix, labels, title: str) -> Path:
    """:func:`render_confusion` written atomically as a PNG."""
    import cv2

    ok, buf = cv2.imencode(".png", render_confusion(matrix, labels, title))
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
        raise OSError(f"{path}: cannot encode the confusion matrix as PNG")
    return atomic_write_bytes(path, buf.tobytes())
