"""The one result schema the CLI and the server return, and its exact JSON form.

Scores stay the model's float32 values: JSON carries the shortest decimal that reads back as the same float32
(orjson writes numpy float32 that way), so a client, `toxserve evaluate` or a threshold sees exactly what the
model computed, and a decision taken on the served score equals one taken offline on the same score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

DEFAULT_THRESHOLD = 0.5


def dumps(value: Any) -> bytes:
    """JSON bytes; numpy float32 scores as the shortest decimal that round-trips to the same float32."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def decide(scores: np.ndarray, cutoffs: np.ndarray | float) -> np.ndarray:
    """score >= cutoff, compared in float64 (exact for float32 scores), the one rule every consumer applies."""
    return np.asarray(scores, dtype=np.float64) >= np.asarray(cutoffs, dtype=np.float64)


def text_results(
    labels: Sequence[str],
    scores: np.ndarray,
    truncated: Sequence[bool],
    thresholds: Mapping[str, float] | None = None,
) -> list[dict]:
    """Per text: {"scores": {label: float32 score}, "labels": [labels at or over threshold], "truncated": bool}."""
    thresholds = thresholds or {}
    scores = np.asarray(scores, dtype=np.float32)
    cutoffs = np.array([thresholds.get(label, DEFAULT_THRESHOLD) for label in labels], dtype=np.float64)
    flagged = decide(scores, cutoffs)
    return [
        {
            "scores": dict(zip(labels, row, strict=True)),
            "labels": [label for label, hit in zip(labels, hits, strict=True) if hit],
            "truncated": bool(was_truncated),
        }
        for row, hits, was_truncated in zip(scores, flagged, truncated, strict=True)
    ]


def with_python_floats(results: list[dict]) -> list[dict]:
    """The same results with plain Python floats (each exactly its float32), for user code that hands them to
    the json module (which cannot encode numpy scalars)."""
    return [{**r, "scores": {label: float(score) for label, score in r["scores"].items()}} for r in results]
