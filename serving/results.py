"""The one result schema the CLI and the server return: every label's score plus the labels over threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.5


def text_results(
    labels: Sequence[str],
    scores: np.ndarray,
    truncated: Sequence[bool],
    thresholds: Mapping[str, float] | None = None,
) -> list[dict]:
    """Per text: {"scores": {label: score}, "labels": [labels at or over threshold], "truncated": bool}."""
    thresholds = thresholds or {}
    cutoffs = np.array([thresholds.get(label, DEFAULT_THRESHOLD) for label in labels], dtype=np.float32)
    results = []
    for row, was_truncated in zip(scores, truncated, strict=True):
        results.append(
            {
                "scores": {label: round(float(s), 6) for label, s in zip(labels, row, strict=True)},
                "labels": [label for label, s, c in zip(labels, row, cutoffs, strict=True) if s >= c],
                "truncated": bool(was_truncated),
            }
        )
    return results
