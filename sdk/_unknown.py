""""None of these": thresholds on a confidence score, chosen on held-out data for a target
precision, and the AUROC that says how well a score separates known from unknown inputs.

Precision here counts every accepted answer: a correct known product is a hit; a wrong product,
or any product for an input of an unknown one, is a miss. Torch-free, used by export (the
classifier's softmax threshold) and by galleries (the similarity threshold)."""
from __future__ import annotations

import numpy as np

DEFAULT_TARGET_PRECISION = 0.95


def threshold_for_precision(scores, correct, target: float = DEFAULT_TARGET_PRECISION) -> float | None:
    """The lowest threshold ``t`` whose accepted answers (``score >= t``) reach ``target``
    precision, so that as many answers as possible are kept; None when no threshold does.

    scores [N]: each answer's confidence; correct [N] bool: whether that answer was right."""
    scores, correct = np.asarray(scores, np.float64).ravel(), np.asarray(correct, bool).ravel()
    if scores.shape != correct.shape:
        raise ValueError(f"scores {scores.shape} and correct {correct.shape} differ in length")
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("threshold calibration needs at least one finite score")
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], np.cumsum(correct[order])
    last = np.r_[s[1:] != s[:-1], True]  # a threshold accepts every tie of its score
    precision = hits / np.arange(1, s.size + 1)
    ok = np.flatnonzero(last & (precision >= target))
    return float(s[ok[-1]]) if ok.size else None


def auroc(known_scores, unknown_scores) -> float:
    """P(score of a known input > score of an unknown one), ties counted half (Mann-Whitney)."""
    k, u = np.asarray(known_scores, np.float64).ravel(), np.asarray(unknown_scores, np.float64).ravel()
    if k.size == 0 or u.size == 0:
        raise ValueError("AUROC needs known and unknown scores")
    allv = np.concatenate([k, u])
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # average ranks, 1-based
    return float((ranks[:k.size].sum() - k.size * (k.size + 1) / 2.0) / (k.size * u.size))


def selective_report(scores, correct, threshold: float | None) -> dict:
    """What a threshold does on a labelled set: answers kept, their precision, accuracy kept."""
    scores, correct = np.asarray(scores, np.float64), np.asarray(correct, bool)
    accepted = scores >= threshold if threshold is not None else np.ones_like(correct)
    n_acc = int(accepted.sum())
    return {"threshold": threshold, "n": int(scores.size), "accepted": n_acc,
            "coverage": n_acc / max(1, scores.size),
            "precision": float(correct[accepted].mean()) if n_acc else None,
            "accuracy_kept": float((correct & accepted).mean()) if scores.size else None}
