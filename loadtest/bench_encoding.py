"""Response encoding: time and size per text of the served JSON schema, exact float32 scores (orjson, today)
against the 6-decimal rounding and json module it replaced. Prints a table; no server involved.

    .venv/bin/python -m loadtest.bench_encoding
"""

from __future__ import annotations

import json
import time

import numpy as np

from serving.frontend import codecs
from serving.results import text_results

LABELS = ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack", "sexual_explicit"]


def rounded_json(scores: np.ndarray) -> bytes:
    """What the server sent before: every score rounded to 6 decimals, encoded by the json module."""
    results = [{"scores": {label: round(float(s), 6) for label, s in zip(LABELS, row, strict=True)},
                "labels": [label for label, s in zip(LABELS, row, strict=True) if s >= 0.5], "truncated": False}
               for row in scores]
    return json.dumps({"predictions": results, "truncated_texts": 0}).encode()


def exact_json(scores: np.ndarray) -> bytes:
    return codecs.encode_json(text_results(LABELS, scores, [False] * len(scores)), LABELS)


def timed_us_per_text(encode, scores: np.ndarray, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        encode(scores)
        best = min(best, time.perf_counter() - started)
    return best * 1e6 / len(scores)


def main() -> None:
    rng = np.random.default_rng(0)
    print("| texts per response | encoding | us per text | bytes per text |")
    print("|---|---|---|---|")
    for count, repeats in ((1, 2000), (32, 300), (20000, 5)):
        scores = (rng.random((count, len(LABELS))) ** 3).astype(np.float32)
        for name, encode in (("rounded, json", rounded_json), ("exact float32, orjson", exact_json)):
            size = len(encode(scores)) / count
            print(f"| {count} | {name} | {timed_us_per_text(encode, scores, repeats):.2f} | {size:.0f} |")


if __name__ == "__main__":
    main()
