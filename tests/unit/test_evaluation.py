"""Our AP and AUC equal scikit-learn's, ties and all."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from serving.tools.evaluation import average_precision, per_label_report, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + y * 0.3, 1)  # coarse rounding makes many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert average_precision(y, scores) == pytest.approx(average_precision_score(y, scores), abs=1e-12)


def test_one_class_gives_nan_and_report_counts_positives():
    assert math.isnan(roc_auc(np.zeros(4, bool), np.arange(4.0)))
    report = per_label_report(["a"], np.array([[0.5], [0.4], [0.9]]), np.array([[0.9], [0.1], [0.8]]))
    assert report["a"]["positives"] == 2 and report["a"]["auc"] == 1.0
