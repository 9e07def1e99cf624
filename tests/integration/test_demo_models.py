"""The demo models rank toxic comments above benign ones on the held-out split; `predict` agrees with them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from serving import load_classifier
from serving.cli import main
from serving.corpus import read_labelled
from serving.tools.evaluation import per_label_report
from tests.conftest import CORPUS


@pytest.mark.parametrize("family", ["roberta", "rnn"])
def test_held_out_toxicity_auc_meets_the_demo_target(demo_dir, family):
    texts, y = read_labelled(CORPUS, split="test")
    classifier = load_classifier(demo_dir / family)
    report = per_label_report(classifier.labels, y, classifier.predict(texts))
    print(f"{family} held-out toxicity AUC {report['toxicity']['auc']:.3f}, AP {report['toxicity']['ap']:.3f}")
    # Issue 15's target (the figures reached are in model_artifacts/README.md)
    assert report["toxicity"]["auc"] >= 0.95
    clearly_toxic = y[:, 0] >= 0.8
    clearly_benign = y[:, 0] <= 0.1
    scores = classifier.predict(texts)[:, 0]
    assert np.median(scores[clearly_toxic]) > np.median(scores[clearly_benign])


def test_held_out_split_has_every_label():
    _, y = read_labelled(CORPUS, split="test")
    assert len(y) >= 150 and ((y >= 0.5).sum(axis=0) >= 5).all()
    train_texts, _ = read_labelled(CORPUS, split="train")
    assert len(train_texts) + len(y) >= 600


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "txt"])
def test_predict_command_equals_the_classifier(demo_dir, tmp_path, fmt):
    texts = ["you are a stupid idiot", "great write up, thanks", "i will find where you live", "ok, \"quoted\""]
    source = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        with source.open("w", newline="") as f:
            csv.writer(f).writerows([["comment_text"], *[[t] for t in texts]])
    elif fmt == "jsonl":
        source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    else:
        source.write_text("\n".join(texts) + "\n")
    model = demo_dir / "rnn"
    result = CliRunner().invoke(main, ["predict", "--model-dir", str(model), "--input", str(source)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    expected = load_classifier(model).predict(texts)
    got = np.array([[line["scores"][label] for label in line["scores"]] for line in lines])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_predict_reads_stdin_and_writes_csv(demo_dir, tmp_path):
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(
        main, ["predict", "--model-dir", str(demo_dir / "roberta"), "--output", str(out)],
        input="you are an idiot\nnice photo\n",
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    classifier = load_classifier(demo_dir / "roberta")
    expected = classifier.predict(["you are an idiot", "nice photo"])
    got = np.array([[float(row[label]) for label in classifier.labels] for row in rows], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-6)
