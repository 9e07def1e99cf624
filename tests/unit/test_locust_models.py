"""LOADTEST_TARGET_MODELS: the spec's parsing, the weighted choice, and what Locust sends and reports with it."""

from __future__ import annotations

import csv
import importlib
import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def locustfile():
    """Imported without gevent's monkey-patching, which importing locust would otherwise apply to every later test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
        patch.delenv("LOADTEST_TARGET_MODELS", raising=False)
        return importlib.import_module("loadtest.locustfile")


def test_names_and_weights_with_weight_one_by_default(locustfile):
    assert locustfile.parse_target_models("toxic-a:70, toxic-b:20,lstm_a.v2:5,lstm-b") == [
        ("toxic-a", 70.0), ("toxic-b", 20.0), ("lstm_a.v2", 5.0), ("lstm-b", 1.0)]
    assert locustfile.parse_target_models("model.tar.gz:0.5") == [("model.tar.gz", 0.5)]
    assert locustfile.parse_target_models("") == locustfile.parse_target_models("  ") == []


@pytest.mark.parametrize("spec, problem", [
    (",", "the name must match"), ("a,,b", "the name must match"), ("a,", "the name must match"),
    ("-a", "the name must match"), ("a/b", "the name must match"), ("a b", "the name must match"),
    (":3", "the name must match"), ("a:0", "positive number"), ("a:-1", "positive number"),
    ("a:x", "positive number"), ("a:", "positive number"), ("a:inf", "positive number"),
    ("a:nan", "positive number"), ("a:1:2", "positive number"), ("a:1,b,a:2", "names 'a' twice"),
])
def test_bad_specs_are_refused(locustfile, spec, problem):
    with pytest.raises(ValueError, match=problem):
        locustfile.parse_target_models(spec)


def test_choices_follow_the_weights(locustfile):
    models = locustfile.parse_target_models("toxic-a:70,toxic-b:20,lstm-a:5,lstm-b:5")
    rng = random.Random(7)
    draws = Counter(locustfile.choose_model(models, rng) for _ in range(20000))
    for name, weight in models:
        assert draws[name] / 20000 == pytest.approx(weight / 100, abs=0.01)
    first, second = random.Random(7), random.Random(7)
    assert [locustfile.choose_model(models, first) for _ in range(50)] == [
        locustfile.choose_model(models, second) for _ in range(50)]


def test_a_bad_spec_fails_the_import():
    env = {**os.environ, "LOCUST_SKIP_MONKEY_PATCH": "1", "LOADTEST_TARGET_MODELS": "toxic-a:70,toxic-b:lots"}
    result = subprocess.run([sys.executable, "-c", "import loadtest.locustfile"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ValueError: LOADTEST_TARGET_MODELS entry 'toxic-b:lots'" in result.stderr


class Recorder(BaseHTTPRequestHandler):
    """Answers every POST with 200 and remembers its path and target-model header."""

    seen: list[tuple[str, str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append((self.path, self.headers.get("X-Amzn-SageMaker-Target-Model")))
        body = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_both_users_name_a_model_per_request_and_report_per_model(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = {**os.environ, "LOADTEST_TARGET_MODELS": "big:3,small:1", "LOADTEST_ENDPOINT": "tox",
           "LOADTEST_RUNTIME_URL": url, "AWS_ACCESS_KEY_ID": "dummy", "AWS_SECRET_ACCESS_KEY": "dummy"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless", "-u", "2",
             "-r", "2", "-t", "3s", "--host", url, "--csv", str(tmp_path / "run"), "--only-summary", "--loglevel",
             "WARNING", "--stop-timeout", "2", "InvocationsUser", "SageMakerUser"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    finally:
        server.shutdown()
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "run_stats.csv").open())}
    assert {"/invocations [big]", "/invocations [small]", "tox [big]", "tox [small]"} <= set(rows), result.stderr
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), result.stderr
    seen = Counter(Recorder.seen)
    assert set(seen) == {("/invocations", "big"), ("/invocations", "small"), ("/endpoints/tox/invocations", "big"),
                         ("/endpoints/tox/invocations", "small")}
    for path in ("/invocations", "/endpoints/tox/invocations"):
        assert seen[(path, "big")] > seen[(path, "small")]
