"""Accuracy of a classifier on a dataset split (torch-free; used by `skulens eval` and export)."""
from __future__ import annotations

import numpy as np

from ._dataset import Dataset
from ._errors import DatasetError


def label_mapping(model_labels, dataset: Dataset) -> np.ndarray:
    """Dataset class id -> model output index, matched by label name."""
    index = {name: i for i, name in enumerate(model_labels)}
    missing = [c for c in dataset.classes if c not in index]
    if missing:
        raise DatasetError(f"{dataset.root}: {len(missing)} dataset classes are unknown to the model "
                           f"(e.g. {missing[:5]}); evaluate on the classes the model was trained on")
    return np.array([index[c] for c in dataset.classes], dtype=np.int64)


def accuracy_report(logits: np.ndarray, targets: np.ndarray, labels, *,
                    coarse_of: np.ndarray | None = None) -> dict:
    """Top-1/top-5/per-class (and coarse top-1) from logits [N, K] and targets [N] in model indices.

    ``coarse_of[k]`` is the coarse group id of model class k (or -1 when unknown).
    """
    n, k = logits.shape
    if n == 0:
        raise DatasetError("no samples to evaluate")
    pred = logits.argmax(axis=1)
    topk = np.argsort(-logits, axis=1)[:, :min(5, k)]
    top1 = float((pred == targets).mean())
    top5 = float((topk == targets[:, None]).any(axis=1).mean())
    per_class = {}
    for c in np.unique(targets):
        m = targets == c
        per_class[labels[c]] = {"n": int(m.sum()), "top1": float((pred[m] == c).mean())}
    report = {"n": int(n), "top1": top1, "top5": top5,
              "mean_class_top1": float(np.mean([v["top1"] for v in per_class.values()])),
              "per_class": per_class}
    if coarse_of is not None:
        valid = coarse_of[targets] >= 0
        if valid.any():
            report["coarse_top1"] = float((coarse_of[pred[valid]] == coarse_of[targets[valid]]).mean())
    return report


def coarse_index(model_labels, dataset: Dataset) -> np.ndarray | None:
    """Coarse id of each model class from the dataset's fine->coarse map, else None."""
    if not dataset.fine_to_coarse:
        return None
    by_name = {dataset.classes[f]: c for f, c in dataset.fine_to_coarse.items()}
    return np.array([by_name.get(name, -1) for name in model_labels], dtype=np.int64)


def evaluate_samples(classifier, samples, dataset: Dataset) -> tuple[np.ndarray, dict]:
    """(logits, accuracy report) of ``classifier`` (an ImageClassifier) on ``samples`` of ``dataset``."""
    if not samples:
        raise DatasetError(f"{dataset.root}: no samples to evaluate")
    targets = label_mapping(classifier.labels, dataset)[np.array([s.label for s in samples])]
    logits = classifier.logits_batch([s.path for s in samples])
    return logits, accuracy_report(logits, targets, classifier.labels,
                                   coarse_of=coarse_index(classifier.labels, dataset))


def evaluate(classifier, dataset: Dataset, split: str = "test", limit: int | None = None) -> dict:
    """Run ``classifier`` (an ImageClassifier) over a split and report its accuracy."""
    samples = dataset.split(split)
    _, report = evaluate_samples(classifier, samples[:limit] if limit else samples, dataset)
    return {**report, "split": split}
