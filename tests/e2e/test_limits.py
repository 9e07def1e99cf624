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


def test_batch_transform_mini_batches_are_answered_row_for_row(archive_server, demo_dir):
    """What a SageMaker MultiRecord transform sends: a 20,000-row CSV, and a JSON Lines file just under 6 MB;
    far more texts than the queue holds, scored in parts, never refused for their size."""
    from serving.corpus import read_labelled
    from tests.conftest import CORPUS

    corpus, _ = read_labelled(CORPUS)
    rows = [f"{corpus[i % len(corpus)]} #{i}".replace('"', "'") for i in range(20_000)]
    csv_body = "".join(f'"{row}"\n' for row in rows)
    started = time.monotonic()
    answer = requests.post(archive_server.url + "/invocations", data=csv_body.encode(), timeout=120,
                           headers={"Content-Type": "text/csv", "Accept": "text/csv"})
    print(f"{archive_server.family}: 20,000 CSV rows in {time.monotonic() - started:.1f} s")
    assert answer.status_code == 200, answer.text[:500]
    lines = answer.text.splitlines()
    assert len(lines) == 20_000
    classifier = load_classifier(demo_dir / archive_server.family)
    sample = list(range(0, 20_000, 997))
    got = np.array([[float(v) for v in lines[i].split(",")[: len(classifier.labels)]] for i in sample])
    np.testing.assert_allclose(got, classifier.predict([rows[i] for i in sample]), atol=1e-5)

    import json

    # long comments (truncated to the model's limit), so the file is 6 MB without taking minutes on 2 CPU cores
    filler = " and the rest of the thread is about the weather, the match last night and the new cafe" * 30
    records, size = [], 0
    while size < 5.9 * 1024 * 1024:
        line = json.dumps({"text": corpus[len(records) % len(corpus)] + filler}) + "\n"
        records.append(line)
        size += len(line.encode())
    started = time.monotonic()
    answer = requests.post(archive_server.url + "/invocations", data="".join(records).encode(), timeout=120,
                           headers={"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"})
    print(f"{archive_server.family}: {len(records)} JSON Lines ({size / 2**20:.1f} MB) in "
          f"{time.monotonic() - started:.1f} s")
    assert answer.status_code == 200, answer.text[:500]
    assert len(answer.text.splitlines()) == len(records)


@pytest.mark.parametrize(("body", "content_type", "status"), [
    ('["hello there"]'.encode("utf-16"), "application/json; charset=utf-16", 200),
    ('["café"]'.encode("latin-1"), "application/json; charset=ISO-8859-1", 200),
    (b'["hello"]', "application/json; charset=punycode", 415),
    (b'["hello"]', "application/json; charset=klingon", 415),
    (b"[" * 50_000 + b"]" * 50_000, "application/json", 400),
    (b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json", 400),
])
def test_charsets_and_json_depth_are_checked_before_decoding(archive_server, body, content_type, status):
    response = requests.post(archive_server.url + "/invocations", data=body, timeout=30,
                             headers={"Content-Type": content_type})
    assert response.status_code == status, response.text[:300]
    if status != 200:
        assert response.json()["error"]["message"]
    assert requests.get(archive_server.url + "/ping", timeout=5).status_code == 200
