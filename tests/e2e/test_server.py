"""The real `serve` on a free port, driven over HTTP and through boto3's sagemaker-runtime client."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import numpy as np
import pytest
import requests
from botocore.config import Config

from serving import load_classifier
from serving.corpus import read_labelled
from tests.conftest import CORPUS
from tests.e2e.conftest import running_server, sigterm_under_load

TEXTS, _ = read_labelled(CORPUS, split="test")


def invoke(url: str, texts: list[str], session=requests, **headers) -> requests.Response:
    return session.post(url + "/invocations", json={"inputs": texts}, headers=headers, timeout=60)


def scores(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([list(p["scores"].values()) for p in response.json()["predictions"]])


def test_served_scores_equal_offline_predict(server, demo_dir):
    classifier = load_classifier(demo_dir / server.family)
    sample = TEXTS[:40]
    np.testing.assert_allclose(scores(invoke(server.url, sample)), classifier.predict(sample), atol=1e-5)


def test_execution_parameters_report_the_workers_that_run(server):
    import os

    workers = os.cpu_count() or 1  # serve's default on a CPU host: one worker per core
    params = requests.get(server.url + "/execution-parameters", timeout=10).json()
    assert params == {"MaxConcurrentTransforms": 2 * workers, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}


def test_boto3_invoke_endpoint_works_unchanged(server):
    client = boto3.client(
        "sagemaker-runtime", endpoint_url=server.url, region_name="us-east-1",
        aws_access_key_id="dummy", aws_secret_access_key="dummy", config=Config(retries={"max_attempts": 0}),
    )
    response = client.invoke_endpoint(
        EndpointName="toxicity", ContentType="application/json", Accept="application/json",
        Body=json.dumps({"inputs": TEXTS[:3]}), CustomAttributes="schema=serving",
    )
    assert response["ContentType"] == "application/json"
    assert response["CustomAttributes"] == "schema=serving"
    body = json.loads(response["Body"].read())
    assert len(body["predictions"]) == 3
    lines = client.invoke_endpoint(EndpointName="toxicity", ContentType="application/jsonlines",
                                   Accept="text/csv", Body="\n".join(json.dumps(t) for t in TEXTS[:4]))
    assert len(lines["Body"].read().decode().splitlines()) == 4


def test_64_concurrent_mixed_requests_equal_sequential(server):
    rng = random.Random(7)
    requests_texts = [rng.sample(TEXTS, rng.randint(1, 12)) for _ in range(64)]
    sequential = [scores(invoke(server.url, texts)) for texts in requests_texts]
    local = threading.local()

    def send(texts):
        local.session = getattr(local, "session", None) or requests.Session()
        return scores(invoke(server.url, texts, local.session))

    with ThreadPoolExecutor(64) as pool:
        concurrent = list(pool.map(send, requests_texts))
    for seq, conc in zip(sequential, concurrent, strict=True):
        np.testing.assert_allclose(conc, seq, atol=1e-5)
    def batches(page: str) -> float:
        counts = [line for line in page.splitlines() if line.startswith("toxserve_batch_size_count")]
        return float(counts[0].split()[-1]) if counts else 0.0

    assert batches(server.metrics(lambda page: batches(page) > 0)) > 0


def test_ping_metrics_and_bad_request_on_the_real_server(server):
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200
    bad = requests.post(server.url + "/invocations", data=b"{", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    too_big = requests.post(server.url + "/invocations", data=b"x" * (7 * 1024 * 1024),
                            headers={"Content-Type": "text/plain"})
    assert too_big.status_code == 413
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200
    access = [json.loads(line) for line in server.log().splitlines() if line.startswith('{"request_id"')]
    assert access and all("text" not in entry for entry in access)


def test_overload_returns_429_quickly_and_accepted_requests_succeed(demo_dir, tmp_path):
    long_texts = [" ".join(TEXTS[:30])] * 40
    with running_server(tmp_path, "--model-dir", str(demo_dir / "roberta"), "--max-queue-texts", "80",
                        "--max-batch-size", "4") as server:
        def send(_):
            started = time.monotonic()
            response = invoke(server.url, long_texts)
            return response, time.monotonic() - started

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(send, range(16)))
        refused = [(r, s) for r, s in outcomes if r.status_code == 429]
        accepted = [r for r, _ in outcomes if r.status_code == 200]
        print(f"{len(accepted)} accepted, {len(refused)} refused with 429")
        assert refused and accepted and len(refused) + len(accepted) == 16
        assert all(r.headers["Retry-After"] and r.json()["error"]["code"] == "queue_full" for r, _ in refused)
        assert max(s for _, s in refused) < 1.0
        assert all(len(r.json()["predictions"]) == 40 for r in accepted)
        assert requests.get(server.url + "/ping", timeout=5).status_code == 200


def test_sigterm_during_load_loses_no_accepted_request(demo_dir, tmp_path):
    with running_server(tmp_path, "--model-dir", str(demo_dir / "roberta")) as server:
        code, _, results = sigterm_under_load(server, lambda i: TEXTS[i % 50: i % 50 + 20])
        answered = [r for r in results if r[0] == "answered"]
        print(f"{len(answered)} answered, {len(results) - len(answered)} refused after SIGTERM")
        assert code == 0, server.log()
        assert answered and all(status == 200 and n == 20 for _, status, n in answered), results
        assert all("Connection refused" in r[1] for r in results if r[0] == "refused"), results


def test_serve_uses_sagemaker_env_and_refuses_a_broken_folder(tmp_path):
    import subprocess

    from tests.e2e.conftest import SERVE

    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    result = subprocess.run([SERVE, "--model-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "unknown architecture" in result.stderr


@pytest.mark.parametrize("variable", ["SAGEMAKER_MODEL_SERVER_WORKERS", "SERVING_MAX_BATCH_SIZE"])
def test_invalid_settings_fail_fast(variable, tmp_path):
    import os
    import subprocess

    from tests.e2e.conftest import SERVE

    env = {**os.environ, variable: "lots"}
    result = subprocess.run([SERVE], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0 and variable in result.stderr


CONTENT_TYPES = [
    ("application/json", lambda texts: json.dumps({"inputs": texts})),
    ("application/json", lambda texts: json.dumps({"instances": texts})),
    ("application/jsonlines", lambda texts: "\n".join(json.dumps(t) for t in texts)),
    ("text/csv", lambda texts: "".join('"' + t.replace('"', '""') + '"\r\n' for t in texts)),
]


@pytest.mark.parametrize("accept", ["application/json", "application/jsonlines", "text/csv"])
@pytest.mark.parametrize(("content_type", "encode"), CONTENT_TYPES)
def test_every_content_type_and_accept_over_http(server, demo_dir, content_type, encode, accept):
    from click.testing import CliRunner

    from serving.cli import main

    sample = ["you are a \"stupid\" idiot, honestly", "great write up, thanks", TEXTS[5]]
    response = requests.post(server.url + "/invocations", data=encode(sample).encode(),
                             headers={"Content-Type": content_type, "Accept": accept}, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith(accept)
    offline = CliRunner().invoke(main, ["predict", "--model-dir", str(demo_dir / server.family)],
                                 input="\n".join(sample) + "\n")
    expected = [list(json.loads(line)["scores"].values()) for line in offline.stdout.splitlines()]
    if accept == "application/json":
        got = [list(p["scores"].values()) for p in response.json()["predictions"]]
    elif accept == "application/jsonlines":
        got = [list(json.loads(line)["scores"].values()) for line in response.text.splitlines()]
    else:
        got = [[float(v) for v in row.split(",")[: len(expected[0])]] for row in response.text.splitlines()]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_bad_input_table_against_the_real_server(server):
    from tests.integration.test_app import BAD_INPUTS

    for body, content_type, headers, status in BAD_INPUTS:
        if status == 413:
            body = "x" * (7 * 1024 * 1024)
        data = body if isinstance(body, bytes) else body.encode()
        response = requests.post(server.url + "/invocations", data=data,
                                 headers={"Content-Type": content_type, **headers}, timeout=30)
        assert response.status_code == status, (body[:40], response.text)
        assert response.json()["error"]["message"]
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200
    assert invoke(server.url, ["still serving"]).status_code == 200


def test_serve_with_the_onnx_int8_backend(demo_dir, tmp_path):
    classifier = load_classifier(demo_dir / "rnn", backend="onnx", variant="int8")
    with running_server(tmp_path, "--model-dir", str(demo_dir / "rnn.model.tar.gz"), "--backend", "onnx",
                        "--onnx-variant", "int8") as server:
        sample = TEXTS[:20]
        np.testing.assert_allclose(scores(invoke(server.url, sample)), classifier.predict(sample), atol=5e-3)
        assert requests.get(server.url + "/ping", timeout=5).status_code == 200


def test_serve_with_nothing_given_serves_the_demo_model(demo_dir, tmp_path):
    """The README's first command: `serve` alone, no /opt/ml/model -> the bundled demo RoBERTox on the port."""
    empty_ml = tmp_path / "ml"
    (empty_ml / "model").mkdir(parents=True)
    with running_server(tmp_path, env={"SAGEMAKER_BASE_DIR": str(empty_ml)}) as server:
        assert requests.get(server.url + "/ping", timeout=5).status_code == 200
        assert len(scores(invoke(server.url, ["hello there"]))[0]) == 7
        assert f"from {demo_dir / 'roberta'}" in server.log()
        assert "backend auto: onnx" in server.log()  # the demo ships a current fp32 export; CPU serves it


def test_the_deadline_starts_when_the_request_arrives_not_after_its_body(demo_dir, tmp_path):
    """A body that trickles in past the timeout is answered 504 without a forward; SageMaker's own 60 s
    limit would otherwise answer first, with its error instead of ours."""
    def trickle():
        yield b'{"inputs": ["hello'
        time.sleep(1.6)
        yield b' there"]}'

    with running_server(tmp_path, "--model-dir", str(demo_dir / "rnn"), "--timeout-s", "1") as server:
        slow = requests.post(server.url + "/invocations", data=trickle(), timeout=30,
                             headers={"Content-Type": "application/json"})
        assert slow.status_code == 504 and slow.json()["error"]["code"] == "timeout", slow.text
        assert invoke(server.url, ["hello there"]).status_code == 200


def test_a_single_model_server_has_no_models_api(server):
    for response in (requests.get(server.url + "/models", timeout=5),
                     requests.post(server.url + "/models", json={"model_name": "x", "url": "y"}, timeout=5),
                     requests.post(server.url + "/models/x/invoke", json={"inputs": ["hi"]}, timeout=5),
                     requests.delete(server.url + "/models/x", timeout=5)):
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", response.text
    assert requests.post(server.url + "/invocations", json={"inputs": ["hi"]}, timeout=10,
                         headers={"X-Amzn-SageMaker-Target-Model": "x"}).status_code == 200  # SageMaker's to route
