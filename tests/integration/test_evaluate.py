"""`toxserve evaluate`: figures equal scikit-learn's, thresholds meet their targets, the server applies them."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from serving import load_classifier
from serving.cli import main
from serving.config import Settings
from serving.corpus import read_labelled
from serving.frontend.app import create_app
from serving.frontend.handlers import Handler
from serving.service import InferenceService, read_thresholds
from serving.tools.evaluation import confusion, evaluate_scores, label_warnings
from tests.conftest import CORPUS

TEXTS, Y = read_labelled(CORPUS, split="test")


def evaluated_scores(folder) -> np.ndarray:
    """The scores `evaluate` computes for a folder (same backend, same batches), so figures compare like with like."""
    classifier = load_classifier(folder)
    return classifier.predict_batches(classifier.encode(TEXTS), 32)


def run(*args: str):
    result = CliRunner().invoke(main, ["evaluate", "--data", str(CORPUS), "--split", "test", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def report(rnn_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    run("--model", f"lstm={rnn_dir}", "--model", f"{rnn_dir},backend=onnx,variant=int8", "--out", str(out))
    return out


def test_figures_equal_scikit_learn(report, rnn_dir):
    figures = json.loads((report / "report.json").read_text())["models"]["lstm"]
    scores = evaluated_scores(rnn_dir)
    labels = load_classifier(rnn_dir).labels
    thresholds = read_thresholds(rnn_dir, labels)  # the demo ships thresholds.json; the report applies it
    assert set(thresholds) == set(labels)
    for j, label in enumerate(labels):
        y = Y[:, j] >= 0.5
        assert figures[label]["auc"] == pytest.approx(roc_auc_score(y, scores[:, j]), abs=1e-9)
        assert figures[label]["ap"] == pytest.approx(average_precision_score(y, scores[:, j]), abs=1e-9)
        tn, fp, fn, tp = confusion_matrix(y, scores[:, j] >= thresholds[label], labels=[False, True]).ravel()
        at = figures[label]["at_threshold"]
        assert (at["tp"], at["fp"], at["fn"], at["tn"]) == (tp, fp, fn, tn)
        assert sum(figures[label]["histogram_positives"]) == y.sum()
        assert sum(figures[label]["histogram_negatives"]) == (~y).sum()


def test_report_compares_models_side_by_side_with_plots(report):
    markdown = (report / "report.md").read_text()
    assert "| label | positives | lstm | rnn-onnx-int8 |" in markdown
    for name in ("lstm", "rnn-onnx-int8"):
        for kind in ("roc", "pr", "histograms"):
            assert (report / f"{name}_{kind}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("target", ["min_recall=0.8", "max_fpr=0.1", "f1"])
def test_picked_thresholds_meet_their_target(rnn_dir, tmp_path, target):
    folder = tmp_path / "rnn"
    shutil.copytree(rnn_dir, folder)
    run("--model", str(folder), "--pick-thresholds", target, "--write-thresholds", "--out", str(tmp_path / "out"))
    document = json.loads((folder / "thresholds.json").read_text())
    thresholds = document["thresholds"]
    # Which data, by name and digest: no path of the machine that picked them travels with the model folder.
    digest = hashlib.sha256(CORPUS.read_bytes()).hexdigest()[:16]
    assert document["picked_on"] == f"{CORPUS.name} sha256:{digest} (test)" and document["target"] == target
    scores = evaluated_scores(folder)
    for j, label in enumerate(load_classifier(folder).labels):
        y, at = Y[:, j] >= 0.5, confusion(Y[:, j] >= 0.5, scores[:, j], thresholds[label])
        if target.startswith("min_recall"):
            assert at["recall"] >= 0.8
        elif target.startswith("max_fpr"):
            assert at["fpr"] <= 0.1
        else:
            default = confusion(y, scores[:, j], 0.5)

            def f1(c):
                return 0.0 if not c["tp"] else 2 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"])

            assert f1(at) >= f1(default)


def test_the_server_applies_thresholds_json(rnn_dir, tmp_path):
    folder = tmp_path / "rnn"
    shutil.copytree(rnn_dir, folder)
    classifier = load_classifier(folder)
    text = "what a clown"
    score = classifier.predict([text])[0]
    wanted = {label: float(s) - 1e-3 for label, s in zip(classifier.labels, score, strict=True)}
    (folder / "thresholds.json").write_text(json.dumps({"thresholds": wanted}))
    service = InferenceService(classifier, Settings(), folder)
    response = create_app(Settings(), handler=Handler(service)).test_client().post("/invocations", json=[text])
    assert response.get_json()["predictions"][0]["labels"] == list(classifier.labels)  # every score >= its cutoff
    service.stop(5)


def test_evaluating_a_running_endpoint_reports_the_figures_of_its_exact_scores(rnn_dir, tmp_path, monkeypatch):
    """The endpoint path loses nothing: its figures are those of the float32 scores the server computed (read back
    exactly), and those scores are the offline ones up to batch-composition noise. Figures are never compared
    across the two paths, where one tie broken differently moves an AUC on another machine's demo model."""
    from serving.client import EndpointScorer
    from tests.e2e.conftest import running_server

    url_out, sm_out = tmp_path / "url", tmp_path / "sm"
    labels = list(load_classifier(rnn_dir).labels)
    with running_server(tmp_path, "--model-dir", str(rnn_dir)) as server:
        run("--endpoint-url", server.url, "--out", str(url_out))
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
        run("--endpoint-name", "toxicity", "--region", "us-east-1", "--runtime-url", server.url, "--out", str(sm_out))
        live_scores = EndpointScorer(url=server.url).predict(TEXTS)  # the same requests again: the same scores
    np.testing.assert_allclose(live_scores, evaluated_scores(rnn_dir), atol=1e-5)
    assert (live_scores != np.round(live_scores, 6)).mean() > 0.5  # not rounded on the way
    expected = evaluate_scores(labels, Y, live_scores)
    for out, name in ((url_out, "endpoint"), (sm_out, "toxicity")):
        live = json.loads((out / "report.json").read_text())["models"][name]
        for label in labels:
            assert live[label]["auc"] == pytest.approx(expected[label]["auc"], abs=1e-12)
            assert live[label]["ap"] == pytest.approx(expected[label]["ap"], abs=1e-12)
            counts = ("threshold", "tp", "fp", "fn", "tn")
            got, wanted = live[label]["at_threshold"], expected[label]["at_threshold"]
            assert [got[k] for k in counts] == [wanted[k] for k in counts]


def test_warnings_for_few_positives_perfect_auc_and_no_separation():
    y = np.array([True] * 3 + [False] * 50)
    assert any("too few" in w for w in label_warnings(y, np.r_[np.ones(3), np.zeros(50)], 1.0))
    assert any("suspiciously" in w for w in label_warnings(y, np.r_[np.ones(3), np.zeros(50)], 1.0))
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    assert any("barely separate" in w for w in label_warnings(y, rng.random(400), 0.51))


def test_missing_label_columns_and_no_source_are_clear_errors(rnn_dir, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("comment_text,toxicity\nhello,0\n")
    result = CliRunner().invoke(main, ["evaluate", "--data", str(data), "--model", str(rnn_dir)])
    assert result.exit_code != 0 and "no column for labels" in result.output
    result = CliRunner().invoke(main, ["evaluate", "--data", str(data)])
    assert result.exit_code != 0 and "nothing to evaluate" in result.output
