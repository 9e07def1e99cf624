"""Limits checked before costly work, over HTTP against the real `serve` on both demo models' model.tar.gz:
a megabyte-long "word" is cut before tokenising (and before the LSTM's n-gram hashing), reported truncated,
or refused with 422 when truncation is off; ordinary long texts are not changed by the cut."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from serving import load_classifier
from tests.e2e.conftest import running_server


@pytest.fixture(scope="module", params=["roberta", "rnn"])
def archive_server(request, demo_dir, tmp_path_factory):
    tarball = demo_dir / f"{request.param}.model.tar.gz"
    with running_server(tmp_path_factory.mktemp("limits"), "--model-dir", str(tarball)) as server:
        server.family = request.param
        yield server


def test_a_four_megabyte_word_is_cut_before_tokenising(archive_server):
    blob = "QUJD" * (1024 * 1024)  # base64-like, no spaces: one 4 MB word
    started = time.monotonic()
    response = requests.post(archive_server.url + "/invocations", json={"inputs": [blob, "hello there"]}, timeout=60)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["truncated"] for p in body["predictions"]] == [True, False] and body["truncated_texts"] == 1
    assert elapsed < 15, elapsed  # uncapped, the LSTM took about a minute here (n-grams hashed in Python)
    refused = requests.post(archive_server.url + "/invocations", timeout=60,
                            json={"inputs": [blob], "parameters": {"truncate": False}})
    assert refused.status_code == 422 and "characters" in refused.json()["error"]["message"]
    assert requests.get(archive_server.url + "/ping", timeout=5).status_code == 200


def test_ordinary_long_texts_score_as_without_the_cap(demo_dir):
    words = ("the council approved the new budget after a long debate about parks roads and schools " * 60).split()
    texts = [" ".join(words[:n]) for n in (50, 120, 400, 900)]  # up to ~5,000 characters of real words
    for family in ("roberta", "rnn"):
        classifier = load_classifier(demo_dir / family)
        uncapped = load_classifier(demo_dir / family, max_text_chars=10**9)
        assert [e.truncated for e in classifier.encode(texts)] == [e.truncated for e in uncapped.encode(texts)]
        np.testing.assert_array_equal(classifier.predict(texts), uncapped.predict(texts))


def test_the_lstm_hashes_only_the_first_characters_of_a_word(demo_dir):
    classifier = load_classifier(demo_dir / "rnn")
    cut = "x" * classifier.max_word_chars
    assert classifier.encode(["x" * 5000])[0].features == classifier.encode([cut])[0].features
