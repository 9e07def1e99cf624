"""Scores leave the server as exactly the float32 the model computed; decisions follow one rule everywhere."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from serving.frontend import codecs
from serving.results import decide, text_results
from serving.tools.evaluation import confusion, pick_threshold

LABELS = ["toxicity", "insult", "threat"]


def awkward_scores(n: int = 4000) -> np.ndarray:
    """Random scores plus the values rounding loses: tiny, next to 0.5 and 1, subnormal, 0 and 1."""
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.random(n), rng.random(n) ** 12]).astype(np.float32)
    edges = np.array([0.0, 1.0, 1e-7, 1e-30, 1e-45, np.nextafter(np.float32(0.5), np.float32(0)), 0.5,
                      np.nextafter(np.float32(1), np.float32(0)), 0.1234567], dtype=np.float32)
    scores = np.concatenate([scores, edges])
    return scores[: len(scores) // 3 * 3].reshape(-1, 3)


@pytest.mark.parametrize("accept", [codecs.JSON, codecs.JSONLINES, codecs.CSV])
def test_every_encoding_reads_back_as_the_same_float32(accept):
    scores = awkward_scores()
    body = codecs.ENCODERS[accept](text_results(LABELS, scores, [False] * len(scores)), LABELS).decode()
    if accept == codecs.JSON:
        rows = [[p["scores"][label] for label in LABELS] for p in json.loads(body)["predictions"]]
    elif accept == codecs.JSONLINES:
        rows = [[json.loads(line)["scores"][label] for label in LABELS] for line in body.splitlines()]
    else:
        rows = [[float(v) for v in row[:3]] for row in csv.reader(io.StringIO(body))]
    back = np.array(rows, dtype=np.float64).astype(np.float32)
    assert np.array_equal(back, scores)


def test_scores_are_written_in_their_shortest_form():
    body = codecs.encode_json(text_results(LABELS, np.array([[1 / 3, 0.1, 2e-8]], np.float32), [False]), LABELS)
    assert b'"toxicity":0.33333334,"insult":0.1,"threat":2e-8' in body


def test_a_score_equal_to_its_threshold_is_flagged_and_one_below_is_not():
    below = np.nextafter(np.float32(0.3), np.float32(0))
    scores = np.array([[0.3, below, 0.9]], np.float32)
    thresholds = {"toxicity": float(np.float32(0.3)), "insult": float(np.float32(0.3)), "threat": 0.95}
    assert text_results(LABELS, scores, [False], thresholds)[0]["labels"] == ["toxicity"]
    assert decide(scores, [float(np.float32(0.3))] * 3).tolist() == [[True, False, True]]


@pytest.mark.parametrize("target", ["min_recall=0.8", "max_fpr=0.1", "f1"])
def test_picked_thresholds_lie_between_scores_so_noise_does_not_flip_decisions(target):
    rng = np.random.default_rng(1)
    y = rng.random(400) < 0.3
    scores = np.clip(rng.random(400) * 0.7 + y * 0.3, 0, 1).astype(np.float32)
    scores[:40] = scores[40:80]  # ties, as duplicated texts give
    threshold = pick_threshold(y, scores, target)
    assert not np.isin(threshold, scores.astype(np.float64))
    picked = confusion(y, scores, threshold)
    for noise in (-1, 1):  # every score one float32 step away
        moved = np.nextafter(scores, np.float32(noise * np.inf))
        assert {k: v for k, v in confusion(y, moved, threshold).items() if k != "threshold"} == \
            {k: v for k, v in picked.items() if k != "threshold"}
