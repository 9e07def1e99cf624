"""Per-label quality as the seed reports it: average precision and ROC AUC, positive at label >= 0.5."""

from __future__ import annotations

import numpy as np

POSITIVE_AT = 0.5


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class only."""
    y_true = np.asarray(y_true).astype(bool)
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[y_true].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Sum over thresholds of precision x recall step (scikit-learn's definition); NaN with no positives."""
    y_true = np.asarray(y_true).astype(bool)
    if not y_true.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    sorted_scores, hits = np.asarray(scores)[order], y_true[order]
    last_of_tie = np.r_[np.diff(sorted_scores) != 0, True]
    true_pos = np.cumsum(hits)[last_of_tie]
    predicted = (np.arange(1, len(hits) + 1))[last_of_tie]
    precision, recall = true_pos / predicted, true_pos / y_true.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_label_report(labels: list[str] | tuple[str, ...], y_frac: np.ndarray, scores: np.ndarray) -> dict:
    """{label: {"ap", "auc", "positives"}} for fractional labels (n, L) and scores (n, L)."""
    report = {}
    for j, label in enumerate(labels):
        y = y_frac[:, j] >= POSITIVE_AT
        report[label] = {
            "ap": average_precision(y, scores[:, j]),
            "auc": roc_auc(y, scores[:, j]),
            "positives": int(y.sum()),
        }
    return report


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    boundaries = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1, len(values)]
    for start, end in zip(boundaries[:-1], boundaries[1:], strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks
