"""Per-label quality as the seed reports it: average precision and ROC AUC, positive at label >= 0.5."""

from __future__ import annotations

import numpy as np

from serving.results import decide

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


SUSPICIOUS_AUC = 0.995
MIN_POSITIVES = 10
HISTOGRAM_BINS = np.linspace(0.0, 1.0, 21)


def confusion(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Counts and rates at one threshold (predicted positive when score >= threshold)."""
    y_true, predicted = np.asarray(y_true).astype(bool), decide(scores, threshold)
    tp, fp = int((predicted & y_true).sum()), int((predicted & ~y_true).sum())
    fn, tn = int((~predicted & y_true).sum()), int((~predicted & ~y_true).sum())
    return {
        "threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "fpr": fp / (fp + tn) if fp + tn else float("nan"),
    }


def pick_threshold(y_true: np.ndarray, scores: np.ndarray, target: str) -> float:
    """A threshold meeting `target`: 'min_recall=R' (the highest that keeps recall >= R),
    'max_fpr=F' (the lowest that keeps the false-positive rate <= F) or 'f1' (best F1).

    The threshold returned lies halfway between the chosen score and the next lower one, not on a score: it
    decides every text of this set as the chosen score does, and a score that moves by rounding noise (another
    batch, another machine's kernels) does not flip its decision."""
    y_true = np.asarray(y_true).astype(bool)
    distinct = np.unique(np.asarray(scores, dtype=np.float64))[::-1]  # high to low
    lower = np.r_[distinct[1:], distinct[-1] - max(1e-6, abs(distinct[-1]) * 1e-3)]
    candidates = (distinct + lower) / 2  # each keeps exactly the scores >= its `distinct` as positives
    kind, _, value = target.partition("=")
    rows = [confusion(y_true, scores, t) for t in candidates]
    if kind == "min_recall":
        meeting = [r["threshold"] for r in rows if r["recall"] >= float(value)]
        return max(meeting) if meeting else float(candidates[-1])
    if kind == "max_fpr":
        meeting = [r["threshold"] for r in rows if r["fpr"] <= float(value)]
        return min(meeting) if meeting else float("inf")
    if kind == "f1":
        def f1(r):
            p, q = r["precision"], r["recall"]
            return 0.0 if not (p + q) or np.isnan(p) else 2 * p * q / (p + q)

        return max(rows, key=f1)["threshold"]
    raise ValueError(f"unknown threshold target {target!r}; use min_recall=R, max_fpr=F or f1")


def label_warnings(y_true: np.ndarray, scores: np.ndarray, auc: float) -> list[str]:
    """The checks the seed's diagnosis post asks for before trusting a label's figures."""
    y_true = np.asarray(y_true).astype(bool)
    warnings = []
    if y_true.sum() < MIN_POSITIVES:
        warnings.append(f"only {int(y_true.sum())} positives: too few to judge this label")
    if not np.isnan(auc) and auc >= SUSPICIOUS_AUC:
        warnings.append(f"AUC {auc:.4f} is suspiciously close to 1.0: check for leakage between training and test")
    if y_true.any() and (~y_true).any():
        gap = float(np.median(scores[y_true]) - np.median(scores[~y_true]))
        if (not np.isnan(auc) and auc < 0.6) or gap < 0.05:
            warnings.append(f"score distributions barely separate (AUC {auc:.3f}, median gap {gap:.3f})")
    return warnings


def evaluate_scores(labels: list[str] | tuple[str, ...], y_frac: np.ndarray, scores: np.ndarray,
                    thresholds: dict[str, float] | None = None) -> dict:
    """Every figure per label: AP, AUC, positives, score histograms per class, confusion at its threshold."""
    thresholds = thresholds or {}
    report = {}
    for j, label in enumerate(labels):
        y, s = y_frac[:, j] >= POSITIVE_AT, scores[:, j]
        auc = roc_auc(y, s)
        report[label] = {
            "ap": average_precision(y, s), "auc": auc, "positives": int(y.sum()), "negatives": int((~y).sum()),
            "histogram_bins": HISTOGRAM_BINS.tolist(),
            "histogram_positives": np.histogram(s[y], HISTOGRAM_BINS)[0].tolist(),
            "histogram_negatives": np.histogram(s[~y], HISTOGRAM_BINS)[0].tolist(),
            "at_threshold": confusion(y, s, thresholds.get(label, 0.5)),
            "warnings": label_warnings(y, s, auc),
        }
    return report
