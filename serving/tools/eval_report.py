"""The evaluation report: Markdown, JSON with every figure, and PNG plots (ROC, precision-recall, histograms)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from serving.tools.evaluation import POSITIVE_AT


def curves(y_true: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """ROC (fpr, tpr) and precision-recall points, one per distinct score, high to low."""
    order = np.argsort(-scores, kind="mergesort")
    hits = y_true[order].astype(float)
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    positives, negatives = max(hits.sum(), 1), max(len(hits) - hits.sum(), 1)
    return {"fpr": np.r_[0, fp / negatives], "tpr": np.r_[0, tp / positives],
            "recall": tp / positives, "precision": tp / np.maximum(tp + fp, 1)}


def plot(out_dir: Path, name: str, labels: list[str], y_frac: np.ndarray, scores: np.ndarray) -> list[str]:
    """roc, pr and histogram figures (one panel per label) for one model; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    rows = math.ceil(len(labels) / columns)
    files = []
    for kind in ("roc", "pr", "histograms"):
        figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
        for j, label in enumerate(labels):
            axis = axes[j // columns][j % columns]
            y = y_frac[:, j] >= POSITIVE_AT
            points = curves(y, scores[:, j])
            if kind == "roc":
                axis.plot(points["fpr"], points["tpr"])
                axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
                axis.set_xlabel("false-positive rate")
                axis.set_ylabel("true-positive rate")
            elif kind == "pr":
                axis.plot(points["recall"], points["precision"])
                axis.set_xlabel("recall")
                axis.set_ylabel("precision")
            else:
                bins = np.linspace(0, 1, 21)
                axis.hist(scores[~y, j], bins, alpha=0.6, label="negatives", density=True)
                axis.hist(scores[y, j], bins, alpha=0.6, label="positives", density=True)
                axis.set_xlabel("score")
                axis.legend(fontsize=7)
            axis.set_title(f"{label} ({int(y.sum())} positives)", fontsize=9)
        for j in range(len(labels), rows * columns):
            axes[j // columns][j % columns].axis("off")
        figure.suptitle(f"{name}: {kind}")
        figure.tight_layout()
        filename = f"{name}_{kind}.png"
        figure.savefig(out_dir / filename, dpi=80)
        plt.close(figure)
        files.append(filename)
    return files


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def comparison_table(reports: dict[str, dict], labels: list[str]) -> list[str]:
    names = list(reports)
    lines = ["| label | positives | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label in labels:
        cells = [f"AP={_fmt(reports[n][label]['ap'])}, AUC={_fmt(reports[n][label]['auc'])}" for n in names]
        lines.append(f"| {label} | {reports[names[0]][label]['positives']} | " + " | ".join(cells) + " |")
    return lines


def markdown(reports: dict[str, dict], labels: list[str], conditions: dict, figures: dict[str, list[str]]) -> str:
    lines = ["# Evaluation", "", *(f"- {k}: {v}" for k, v in conditions.items()), "",
             "## AP and ROC AUC per label (positive at label >= 0.5)", "", *comparison_table(reports, labels), ""]
    for name, report in reports.items():
        lines += [f"## {name}", "", "| label | threshold | precision | recall | FPR | TP | FP | FN | TN |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label in labels:
            c = report[label]["at_threshold"]
            lines.append(f"| {label} | {c['threshold']:.3f} | {_fmt(c['precision'])} | {_fmt(c['recall'])} | "
                         f"{_fmt(c['fpr'])} | {c['tp']} | {c['fp']} | {c['fn']} | {c['tn']} |")
        warnings = [f"- **{label}**: {w}" for label in labels for w in report[label]["warnings"]]
        lines += ["", "Warnings:" if warnings else "No warnings.", *warnings, ""]
        lines += [f"![{f}]({f})" for f in figures.get(name, [])] + [""]
    return "\n".join(lines)


def write(out_dir: Path, reports: dict[str, dict], labels: list[str], conditions: dict,
          figures: dict[str, list[str]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    document = _without_nan({"conditions": conditions, "models": reports})
    (out_dir / "report.json").write_text(json.dumps(document, indent=2, allow_nan=False))
    (out_dir / "report.md").write_text(markdown(reports, labels, conditions, figures))


def _without_nan(value):
    """NaN (a label with one class only) as JSON null."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nan(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
