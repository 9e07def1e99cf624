"""A model folder's code/inference.py (or SAGEMAKER_PROGRAM) replaces the steps it defines, on the real server."""

from __future__ import annotations

import shutil

import numpy as np
import requests

from serving import load_classifier
from tests.e2e.conftest import running_server

OVERRIDE_INPUT_AND_OUTPUT = '''
import json

from serving.frontend.handlers import default_input_fn


def input_fn(input_data, content_type):
    if content_type == "application/x-pipe-separated":
        return {"inputs": input_data.decode().split("|")}
    return default_input_fn(input_data, content_type)


def output_fn(prediction, accept):
    results = prediction.classification.results
    return json.dumps({"custom": True, "toxicity": [r["scores"]["toxicity"] for r in results]}), "application/json"
'''

OWN_MODEL = '''
def model_fn(model_dir):
    return lambda texts: [[len(t)] for t in texts]


def transform_fn(model, input_data, content_type, accept):
    texts = input_data.decode().splitlines()
    return "\\n".join(str(n) for [n] in model(texts)), "text/plain"
'''


def test_input_and_output_overrides_keep_the_default_model_and_batching(demo_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(demo_dir / "rnn", folder)
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(OVERRIDE_INPUT_AND_OUTPUT)
    texts = ["you are an idiot", "lovely photos of the coast"]
    with running_server(tmp_path, "--model-dir", str(folder)) as server:
        response = requests.post(server.url + "/invocations", data="|".join(texts),
                                 headers={"Content-Type": "application/x-pipe-separated"}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["custom"] is True
        expected = load_classifier(demo_dir / "rnn").predict(texts)[:, 0]
        np.testing.assert_allclose(body["toxicity"], expected, atol=1e-5)
        plain = requests.post(server.url + "/invocations", json=texts, timeout=30)
        assert plain.json()["custom"] is True  # default input_fn, user output_fn
        bad = requests.post(server.url + "/invocations", data="{", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400


def test_sagemaker_program_with_its_own_model_and_transform_fn(demo_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(demo_dir / "rnn", folder)
    (folder / "code").mkdir()
    (folder / "code" / "handler.py").write_text(OWN_MODEL)
    with running_server(tmp_path, "--model-dir", str(folder), env={"SAGEMAKER_PROGRAM": "handler.py"}) as server:
        response = requests.post(server.url + "/invocations", data="abc\nhello",
                                 headers={"Content-Type": "text/plain"}, timeout=30)
        assert response.status_code == 200 and response.text == "3\n5"
        assert response.headers["Content-Type"].startswith("text/plain")


SLOW_MODEL = '''
import threading
import time

{declaration}
_lock = threading.Lock()
_running = 0
_most = 0


def model_fn(model_dir):
    return None


def predict_fn(data, model):
    global _running, _most
    with _lock:
        _running += 1
        _most = max(_most, _running)
    time.sleep(0.3)
    with _lock:
        _running -= 1
    return {{"most_at_once": _most}}
'''


def send_together(url: str, count: int) -> list[requests.Response]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: requests.post(url + "/invocations", json=["x"], timeout=60), range(count)))


def slow_folder(demo_dir, tmp_path, declaration: str = ""):
    folder = tmp_path / "model"
    shutil.copytree(demo_dir / "rnn", folder)
    (folder / "code").mkdir()
    (folder / "code" / "inference.py").write_text(SLOW_MODEL.format(declaration=declaration))
    return folder


def test_user_code_runs_one_request_at_a_time_unless_it_declares_itself_thread_safe(demo_dir, tmp_path):
    with running_server(tmp_path, "--model-dir", str(slow_folder(demo_dir, tmp_path)), "--workers", "1") as server:
        answers = send_together(server.url, 6)
        assert all(r.status_code == 200 for r in answers)
        assert max(r.json()["most_at_once"] for r in answers) == 1
    safe = slow_folder(demo_dir, tmp_path / "safe", "THREAD_SAFE = True")
    with running_server(tmp_path, "--model-dir", str(safe), "--workers", "1") as server:
        assert max(r.json()["most_at_once"] for r in send_together(server.url, 6)) > 1


def test_user_code_gets_the_queue_limit_and_the_deadline(demo_dir, tmp_path):
    folder = slow_folder(demo_dir, tmp_path)
    with running_server(tmp_path, "--model-dir", str(folder), "--workers", "1", "--max-queue-texts", "6",
                        "--timeout-s", "1") as server:
        answers = send_together(server.url, 8)
        codes = sorted(r.status_code for r in answers)
        assert 200 in codes and 429 in codes and 504 in codes, codes
        assert all(r.json()["error"]["code"] in ("queue_full", "timeout") for r in answers if r.status_code != 200)
        assert requests.get(server.url + "/ping", timeout=5).status_code == 200
