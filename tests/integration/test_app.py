"""The Flask app with a real demo model behind the real batcher, through `app.test_client()`."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from serving import load_classifier
from serving.config import Settings
from serving.frontend.app import create_app
from serving.frontend.handlers import Handler
from serving.service import InferenceService

TEXTS = ["you are a stupid idiot", "thanks for the great write up", "i will find where you live, \"loser\""]


@pytest.fixture(scope="module", params=["roberta", "rnn", "roberta-onnx-fp32", "rnn-onnx-int8", "roberta-onnx-int8"])
def served(request, demo_dir):
    """The same HTTP behaviour whatever runs the model: torch, or each ONNX variant."""
    family, _, variant = request.param.partition("-onnx-")
    settings = Settings(max_payload_mb=0.05, max_batch_size=8)
    backend = "onnx" if variant else "torch"
    classifier = load_classifier(demo_dir / family, backend=backend, variant=variant or "fp32")
    service = InferenceService(classifier, settings)
    app = create_app(settings, handler=Handler(service))
    yield app.test_client(), classifier
    service.stop(5)


def tolerance(classifier) -> float:
    """int8 dynamic quantisation scales activations per batch, so its scores move slightly with batch company."""
    return 5e-3 if getattr(classifier, "variant", None) == "int8" else 1e-5


def post(client, body, content_type="application/json", **headers):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/invocations", data=data, headers={"Content-Type": content_type, **headers})


def scores_of(response) -> np.ndarray:
    predictions = response.get_json()["predictions"]
    return np.array([list(p["scores"].values()) for p in predictions])


def test_ping_and_execution_parameters(served):
    client, _ = served
    assert client.get("/ping").status_code == 200 and client.get("/ping").data == b""
    assert client.post("/ping").status_code == 200
    params = client.get("/execution-parameters").get_json()
    assert params["BatchStrategy"] == "MULTI_RECORD" and params["MaxPayloadInMB"] == 1  # 0.05 MB: SageMaker's least


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ({"inputs": TEXTS}, "application/json"),
        ({"inputs": TEXTS, "parameters": {"truncate": True}}, "application/json"),
        ({"instances": TEXTS}, "application/json"),
        ({"instances": [{"text": t} for t in TEXTS]}, "application/json"),
        (TEXTS, "application/json; charset=utf-8"),
        (json.dumps(TEXTS).encode("utf-16"), "application/json; charset=UTF-16"),
        (json.dumps(TEXTS).encode("latin-1"), "application/json; charset=iso-8859-1"),
        ("".join(json.dumps(t) + "\n" for t in TEXTS), "application/jsonlines"),
        ("".join(json.dumps({"inputs": t}) + "\n" for t in TEXTS), "application/jsonlines"),
        ('you are a stupid idiot\r\nthanks for the great write up\r\n"i will find where you live, ""loser"""\r\n',
         "text/csv"),
    ],
)
def test_every_content_type_gives_the_offline_scores(served, body, content_type):
    client, classifier = served
    response = post(client, body, content_type)
    assert response.status_code == 200, response.data
    np.testing.assert_allclose(scores_of(response), classifier.predict(TEXTS), atol=tolerance(classifier))


def test_plain_text_and_single_string(served):
    client, classifier = served
    expected = classifier.predict([TEXTS[0]])
    for response in (post(client, TEXTS[0], "text/plain"), post(client, json.dumps(TEXTS[0]))):
        np.testing.assert_allclose(scores_of(response), expected, atol=tolerance(classifier))


def test_accept_jsonlines_and_csv(served):
    client, classifier = served
    expected = classifier.predict(TEXTS)
    lines = post(client, TEXTS, Accept="application/jsonlines").data.decode().splitlines()
    assert len(lines) == 3
    got = [list(json.loads(x)["scores"].values()) for x in lines]
    np.testing.assert_allclose(got, expected, atol=tolerance(classifier))
    response = post(client, TEXTS, Accept="text/csv")
    assert response.content_type.startswith("text/csv")
    rows = [line.split(",") for line in response.data.decode().splitlines()]
    np.testing.assert_allclose([[float(v) for v in row[: len(classifier.labels)]] for row in rows], expected,
                               atol=tolerance(classifier))
    assert post(client, TEXTS, Accept="text/html, */*;q=0.1").content_type == "application/json"


def test_huggingface_schema_matches_the_pipeline_shape(served):
    client, classifier = served
    attributes = "schema=huggingface"
    single = post(client, json.dumps({"inputs": TEXTS[0]}), **{"X-Amzn-SageMaker-Custom-Attributes": attributes})
    assert single.headers["X-Amzn-SageMaker-Custom-Attributes"] == attributes
    body = single.get_json()
    top = int(np.argmax(classifier.predict([TEXTS[0]])[0]))
    assert body == [{"label": classifier.labels[top], "score": pytest.approx(body[0]["score"])}]
    ranked = post(client, {"inputs": TEXTS, "parameters": {"schema": "huggingface", "top_k": 2}}).get_json()
    assert len(ranked) == 3 and all(len(r) == 2 and r[0]["score"] >= r[1]["score"] for r in ranked)
    every = post(client, {"inputs": TEXTS[0], "parameters": {"schema": "huggingface", "return_all_scores": True}})
    assert len(every.get_json()) == len(classifier.labels)


def test_truncation_is_reported_or_refused(served):
    client, classifier = served
    long_text = "blah " * 2000
    response = post(client, {"inputs": [long_text, "ok"]})
    assert response.status_code == 200
    assert response.get_json()["truncated_texts"] == 1 and response.headers["X-Truncated-Texts"] == "1"
    refused = post(client, {"inputs": [long_text], "parameters": {"truncate": False}})
    assert refused.status_code == 422 and "truncation" in refused.get_json()["error"]["message"]
    header = post(client, [long_text], **{"X-Amzn-SageMaker-Custom-Attributes": "truncate=false"})
    assert header.status_code == 422


def test_timing_headers_and_metrics(served):
    client, _ = served
    response = post(client, TEXTS)
    for name in ("X-Queue-Time-Ms", "X-Inference-Time-Ms", "X-Tokenize-Time-Ms", "X-Request-Id"):
        assert name in response.headers
    page = client.get("/metrics").data.decode()
    for metric in ("toxserve_requests_total", "toxserve_stage_seconds_bucket", "toxserve_batch_size_bucket",
                   "toxserve_batch_padded_tokens_bucket", "toxserve_queue_texts", "toxserve_truncated_texts_total"):
        assert metric in page


BAD_INPUTS = [
    ("not json", "application/json", {}, 400),
    ("{", "application/json", {}, 400),
    ("[]", "application/json", {}, 400),
    ('""', "application/json", {}, 400),
    ("[1, 2]", "application/json", {}, 400),
    ('["ok", null]', "application/json", {}, 400),
    ('[["nested"]]', "application/json", {}, 400),
    ("42", "application/json", {}, 400),
    ("null", "application/json", {}, 400),
    ('{"foo": "bar"}', "application/json", {}, 400),
    ('{"inputs": 5}', "application/json", {}, 400),
    ('{"inputs": []}', "application/json", {}, 400),
    ('{"inputs": "x", "parameters": []}', "application/json", {}, 400),
    ('{"inputs": "x", "parameters": {"truncate": "maybe"}}', "application/json", {}, 400),
    ('{"inputs": "x", "parameters": {"schema": "xml"}}', "application/json", {}, 400),
    ('{"inputs": "x", "parameters": {"top_k": 0}}', "application/json", {}, 400),
    ('{"instances": [{"wrong": "key"}]}', "application/json", {}, 400),
    ('"ok"\n\n"gap"', "application/jsonlines", {}, 400),
    ('"ok"\n{bad json', "application/jsonlines", {}, 400),
    ("a,b\nc", "text/csv", {}, 400),
    ('"unterminated', "text/csv", {}, 400),
    ("   ", "text/plain", {}, 400),
    ("", "application/json", {}, 400),
    (b"\xff\xfe\xfa", "application/json", {}, 422),
    (b"caf\xe9", "text/plain", {}, 422),
    ('"x"', "application/xml", {}, 415),
    ('"x"', "image/png", {}, 415),
    ('"x"', "application/json", {"Accept": "application/xml"}, 406),
    ('"x"', "application/json", {"Accept": "text/html"}, 406),
    ('"x"', "application/json", {"Accept": "text/csv", "X-Amzn-SageMaker-Custom-Attributes": "schema=huggingface"},
     406),
    ('"' + "x" * 60_000 + '"', "application/json", {}, 413),
    ("x", "application/json; charset=klingon", {}, 415),
    ('"x"', "application/json; charset=punycode", {}, 415),
    ("[" * 5000 + "]" * 5000, "application/json", {}, 400),
    ('{"inputs": ' + "[" * 5000 + "]" * 5000 + "}", "application/json", {}, 400),
    ('"ok"\n' + "[" * 5000 + "]" * 5000, "application/jsonlines", {}, 400),
]


@pytest.mark.parametrize(("body", "content_type", "headers", "status"), BAD_INPUTS)
def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(served, body, content_type, headers, status):
    client, _ = served
    response = post(client, body, content_type, **headers)
    assert response.status_code == status, response.data
    error = response.get_json()["error"]
    assert error["code"] and error["message"]
    assert client.get("/ping").status_code == 200
    assert post(client, ["still fine"]).status_code == 200


def test_unknown_routes_and_methods_answer_json(served):
    client, _ = served
    assert client.get("/nope").get_json()["error"]["code"] == "not_found"
    assert client.get("/invocations").status_code == 405


def test_not_ready_answers_503(demo_dir):
    app = create_app(Settings())
    assert app.test_client().get("/ping").status_code == 503
    response = app.test_client().post("/invocations", json=["hi"])
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "not_ready"


def test_failed_load_keeps_ping_at_503_with_the_reason(tmp_path):
    from serving.errors import ModelLoadError

    def broken():
        raise ModelLoadError(f"{tmp_path}/config.json is missing")

    app = create_app(Settings(), build_handler=broken)
    state = app.extensions["model_state"]
    for _ in range(100):
        if state.error:
            break
        import time

        time.sleep(0.01)
    response = app.test_client().get("/ping")
    assert response.status_code == 503 and "config.json is missing" in response.get_json()["error"]["message"]


def test_ping_reports_a_dead_inference_loop(demo_dir):
    settings = Settings()
    service = InferenceService(load_classifier(demo_dir / "rnn"), settings)
    client = create_app(settings, handler=Handler(service)).test_client()
    assert client.get("/ping").status_code == 200
    service.stop(5)
    assert client.get("/ping").status_code == 503
    assert client.post("/invocations", json=["hi"]).status_code == 503


def test_a_request_larger_than_the_queue_is_scored_in_parts_not_refused(demo_dir):
    """A batch transform mini-batch can exceed the queue limit; size alone never answers 429."""
    settings = Settings(max_queue_texts=64, max_batch_size=16)
    classifier = load_classifier(demo_dir / "rnn")
    service = InferenceService(classifier, settings)
    client = create_app(settings, handler=Handler(service)).test_client()
    texts = [f"{TEXTS[i % 3]} number {i}" for i in range(1000)]
    try:
        response = post(client, "".join(json.dumps(t) + "\n" for t in texts), "application/jsonlines",
                        Accept="application/jsonlines")
        assert response.status_code == 200, response.data
        got = [list(json.loads(line)["scores"].values()) for line in response.data.decode().splitlines()]
        np.testing.assert_allclose(got, classifier.predict(texts), atol=1e-5)
        assert service.batcher.queued_texts == 0
    finally:
        service.stop(5)


def test_two_large_requests_at_once_take_turns_and_small_ones_still_get_in(demo_dir):
    """Concurrent batch-transform mini-batches (MaxConcurrentTransforms > 1) are never refused for size."""
    from concurrent.futures import ThreadPoolExecutor

    settings = Settings(max_queue_texts=64, max_batch_size=16)
    service = InferenceService(load_classifier(demo_dir / "rnn"), settings)
    client = create_app(settings, handler=Handler(service)).test_client()
    large = [f"{TEXTS[i % 3]} number {i}" for i in range(600)]
    try:
        with ThreadPoolExecutor(6) as pool:
            big = [pool.submit(post, client, {"inputs": large}) for _ in range(2)]
            small = [pool.submit(post, client, {"inputs": TEXTS}) for _ in range(8)]
            statuses = [f.result().status_code for f in big + small]
        assert statuses == [200] * 10, statuses
    finally:
        service.stop(5)


def test_user_code_that_json_dumps_the_services_results_works(demo_dir):
    import types

    from serving.service import RequestOptions

    def predict_fn(data, model):
        return json.dumps(model.classify(data.texts, RequestOptions()).results)  # numpy scalars would raise

    settings = Settings()
    service = InferenceService(load_classifier(demo_dir / "rnn"), settings)
    user = types.SimpleNamespace(predict_fn=predict_fn, THREAD_SAFE=True)
    client = create_app(settings, handler=Handler(service, user)).test_client()
    try:
        response = post(client, TEXTS)
        assert response.status_code == 200, response.data
        assert len(json.loads(response.get_json())) == len(TEXTS)
    finally:
        service.stop(5)


def test_a_request_leaves_no_deadline_behind_on_its_thread(served):
    """The deadline is set per request; a thread's next use must not meet a stale one (a past deadline would
    make the next request on that thread time out at once)."""
    from serving.service import request_deadline

    client, _ = served
    assert request_deadline.get() is None
    for call in (lambda: client.post("/invocations", json={"inputs": ["hi"]}), lambda: client.get("/nowhere"),
                 lambda: client.post("/invocations", data=b"x" * 100_000, content_type="text/plain")):
        response = call()
        assert response.status_code in (200, 404, 413)
        assert request_deadline.get() is None


def call_wsgi(app, method: str, path: str, body: bytes = b"", **environ) -> tuple[str, dict, bytes, io.BytesIO]:
    """The app called as a WSGI server calls it, with the environ a test client would not send (no length)."""
    stream = io.BytesIO(body)
    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "test", "SERVER_PORT": "80",
           "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": stream, "wsgi.errors": io.StringIO(),
           "CONTENT_TYPE": "application/json", **environ}
    answer: dict = {}
    chunks = app(env, lambda status, headers: answer.update(status=status, headers=dict(headers)))
    return answer["status"], answer["headers"], b"".join(chunks), stream


def test_inference_and_health_routes_keep_the_contract_without_flask(served):
    """/invocations and /ping are answered before Flask (serving.frontend.direct): methods, HEAD, request ids,
    echoed attributes on errors too, and the endpoint route's metrics label."""
    client, _ = served
    head = client.head("/ping")
    assert head.status_code == 200 and head.data == b""
    before = client.get("/metrics").data.decode()
    for method, path, allow in (("PUT", "/ping", "GET, HEAD, OPTIONS, POST"),
                                ("GET", "/endpoints/e/invocations", "OPTIONS, POST"),
                                ("DELETE", "/invocations", "OPTIONS, POST")):
        response = client.open(path, method=method)
        assert response.status_code == 405 and response.headers["Allow"] == allow
        assert response.get_json()["error"]["code"] == "method_not_allowed"
        options = client.open(path, method="OPTIONS")
        assert options.status_code == 200 and options.headers["Allow"] == allow
    flask_405 = client.post("/metrics")
    assert flask_405.status_code == 405 and "GET" in flask_405.headers["Allow"]
    assert client.post("/endpoints/a/b/invocations", json=["hi"]).status_code == 404
    given = post(client, ["hi"], **{"X-Amzn-RequestId": "req-123"})
    assert given.status_code == 200 and given.headers["X-Request-Id"] == "req-123"
    fresh = post(client, ["hi"])
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["X-Request-Id"])
    assert fresh.headers["X-Request-Id"] != post(client, ["hi"]).headers["X-Request-Id"]
    bad = post(client, "not json", **{"X-Amzn-SageMaker-Custom-Attributes": "trace=1"})
    assert bad.status_code == 400 and bad.headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=1"
    assert bad.headers["Content-Type"] == "application/json" and "X-Request-Id" in bad.headers
    assert client.post("/endpoints/my-endpoint/invocations", json=["hi"]).status_code == 200
    page = client.get("/metrics").data.decode()
    assert 'route="/endpoints/<name>/invocations"' in page and 'route="/ping"' in page
    wrong_method = r'toxserve_requests_total\{route="unmatched",status="405"\} (\S+)'
    counted = [float(m.group(1)) if m else 0.0 for m in (re.search(wrong_method, p) for p in (before, page))]
    assert counted[1] - counted[0] == 4  # the three 405s above and POST /metrics, labelled as Flask labels them


def test_a_body_without_a_length_is_read_only_up_to_the_limit(served):
    """A chunked body (no Content-Length) over the payload limit gets 413 after limit + 1 bytes, not read whole;
    a declared length over it gets 413 unread; a malformed length 400."""
    client, _ = served
    app = client.application
    limit = Settings(max_payload_mb=0.05).max_payload_bytes  # the fixture's
    status, headers, body, stream = call_wsgi(app, "POST", "/invocations", b'"' + b"x" * (4 * limit) + b'"',
                                              HTTP_TRANSFER_ENCODING="chunked")
    assert status.startswith("413") and json.loads(body)["error"]["code"] == "request_entity_too_large"
    assert stream.tell() == limit + 1 and headers["Connection"] == "close"  # the rest is never read
    status, headers, _, stream = call_wsgi(app, "POST", "/invocations", b'"x"' * limit,
                                           CONTENT_LENGTH=str(3 * limit))
    assert status.startswith("413") and stream.tell() == 0 and headers["Connection"] == "close"
    status, _, body, _ = call_wsgi(app, "POST", "/invocations", b'["hi"]', CONTENT_LENGTH="six")
    assert status.startswith("400") and "Content-Length" in json.loads(body)["error"]["message"]
    status, _, body, _ = call_wsgi(app, "POST", "/invocations", b'["hi", "there"]', CONTENT_LENGTH="100")
    assert status.startswith("400") and "ended after 15 of its 100 bytes" in json.loads(body)["error"]["message"]
    for method, extra, answer in (("DELETE", {}, "405"), ("POST", {"HTTP_ACCEPT": "image/png"}, "406")):
        status, headers, _, stream = call_wsgi(app, method, "/invocations", b'["hi"]' * 20, CONTENT_LENGTH="120",
                                               **extra)  # answered before reading: the body is read and dropped
        assert status.startswith(answer) and stream.tell() == 120 and "Connection" not in headers
    status, headers, body, _ = call_wsgi(app, "post", "/invocations", b'["hi"]')  # a WSGI server may pass it lower case
    assert status.startswith("200") and headers["Content-Length"] == str(len(body)) and "Connection" not in headers
    assert json.loads(body)["predictions"][0]["scores"]


def test_a_failing_metrics_write_does_not_cost_the_answer(served, monkeypatch):
    """Counting and logging come after the answer is made: their failure is logged, the client still gets it."""
    from serving.frontend import direct

    client, _ = served

    def broken(*_args):
        raise OSError("metrics folder gone")

    monkeypatch.setattr(direct, "record", broken)
    response = post(client, ["hi"])
    assert response.status_code == 200 and response.get_json()["predictions"]
