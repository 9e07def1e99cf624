"""The engines layout's ASGI front end (serving.frontend.asgi.LoopRoutes) in-process, fed ASGI messages as an ASGI
server feeds them: the answers before any model work (methods, body limits, cut-short bodies, a client gone) are
serving.frontend.direct's, headers included, and the connection is closed when its body was not read whole."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.config import Settings
from serving.errors import BadRequest, RequestTimeout
from serving.frontend.app import create_app
from serving.frontend.asgi import LOOP_BODY_MAX, LoopRoutes, drive_on_loop
from serving.service import request_deadline

LIMIT = 1024  # bytes: max_payload_mb below


@pytest.fixture
def app() -> LoopRoutes:
    settings = Settings(max_payload_mb=LIMIT / 1024 / 1024)
    flask_app = create_app(settings)  # no model: invocations that get past their body answer 503
    return LoopRoutes(flask_app, flask_app.extensions["model_state"], settings)


def call(app: LoopRoutes, method: str, path: str, headers: dict[str, str], chunks: list[bytes] | None = None,
         disconnect: bool = False, stall: bool = False) -> tuple[int, dict[str, str], bytes, int]:
    """Status, headers, body and how many body messages the app read; with `stall`, the client sends its first
    chunk and then nothing more, and stays connected."""
    chunks = chunks or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    if disconnect:
        messages = [{**messages[0], "more_body": True}, {"type": "http.disconnect"}]
    read = []
    sent: list[dict] = []

    async def receive() -> dict:
        read.append(1)
        if stall and len(read) > 1:
            await asyncio.Event().wait()  # never set
        return messages[min(len(read), len(messages)) - 1]

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http", "method": method,
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000),
             "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))  # a stalled read the app never gives up on fails
    start, *rest = sent
    answered = {k.decode().lower(): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], answered, b"".join(m.get("body", b"") for m in rest), len(read)


def test_options_and_a_wrong_method_are_answered_as_flask_answers_them(app):
    status, headers, body, _ = call(app, "OPTIONS", "/invocations", {})
    assert status == 200 and headers["allow"] == "OPTIONS, POST" and body == b""
    status, headers, body, _ = call(app, "DELETE", "/invocations", {})
    assert status == 405 and headers["allow"] == "OPTIONS, POST"
    assert json.loads(body)["error"]["code"] == "method_not_allowed"


def test_ping_and_head_say_why_not_ready(app):
    status, headers, body, _ = call(app, "GET", "/ping", {"X-Amzn-RequestId": "req-1"})
    assert status == 503 and headers["x-request-id"] == "req-1"
    assert json.loads(body)["error"]["code"] == "not_ready"
    status, _, body, _ = call(app, "HEAD", "/ping", {})
    assert status == 503 and body == b""


def test_a_declared_length_over_the_limit_is_refused_unread_and_the_connection_closed(app):
    status, headers, body, read = call(app, "POST", "/invocations", {"Content-Length": str(LIMIT + 1)}, [b"x"])
    assert status == 413 and headers["connection"] == "close" and read == 0
    assert json.loads(body)["error"]["code"] == "request_entity_too_large"


def test_a_chunked_body_is_refused_once_past_the_limit(app):
    chunks = [b"x" * 600, b"x" * 600, b"x" * 600]
    status, headers, _, read = call(app, "POST", "/invocations", {"Transfer-Encoding": "chunked"}, chunks)
    assert status == 413 and headers["connection"] == "close" and read == 2


def test_a_body_shorter_than_its_length_or_a_client_gone_is_refused_not_scored_in_part(app):
    status, headers, body, _ = call(app, "POST", "/invocations", {"Content-Length": "100"}, [b'{"inputs": "a"}'])
    assert status == 400 and headers["connection"] == "close"
    assert "ended after 15 of its 100 bytes" in json.loads(body)["error"]["message"]
    status, headers, _, _ = call(app, "POST", "/invocations", {"Content-Length": "100"}, [b"x" * 10], disconnect=True)
    assert status == 400 and headers["connection"] == "close"
    status, headers, _, _ = call(app, "POST", "/invocations", {"Content-Length": "abc"}, [b"x"])
    assert status == 400 and headers["connection"] == "close"


def test_an_answer_given_before_the_body_was_read_keeps_the_connection_when_the_body_can_be_read(app):
    chunks = [b'{"inputs": "a"}']
    status, headers, _, read = call(app, "DELETE", "/invocations", {"Content-Length": str(len(chunks[0]))}, chunks)
    assert status == 405 and "connection" not in headers and read == 1  # read and dropped: in step
    status, headers, _, _ = call(app, "POST", "/invocations", {"Content-Length": str(len(chunks[0])),
                                 "X-Amzn-SageMaker-Custom-Attributes": "truncate=false"}, chunks)
    assert status == 503 and "connection" not in headers  # read whole, then no model
    assert headers["x-amzn-sagemaker-custom-attributes"] == "truncate=false"


def test_a_body_that_stops_arriving_gets_408_at_the_request_deadline_and_the_connection_closes():
    settings = Settings(timeout_s=1)
    flask_app = create_app(settings)
    app = LoopRoutes(flask_app, flask_app.extensions["model_state"], settings)
    large = str(LOOP_BODY_MAX + 1)  # counted among the front end's large requests while it is read
    for method, length, chunks in (("POST", "17", [b'{"inputs": "a', b'"}']), ("POST", large, [b"[", b"]"]),
                                   ("DELETE", "17", [b"a", b"b"])):  # DELETE: answered before its body is read
        started = time.monotonic()
        status, headers, body, read = call(app, method, "/invocations", {"Content-Length": length}, chunks,
                                           stall=True)
        assert 0.9 < time.monotonic() - started < 5 and headers["connection"] == "close" and read == 2
        if method == "POST":
            assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
        else:  # its 405 waited for the body to keep the connection in step, then gave up on it
            assert status == 405
        assert app.large == 0


def test_past_its_share_of_large_requests_a_front_end_answers_429_before_reading_another(app):
    app.large = app.large_limit  # that many large bodies are being read or scored
    big = str(LOOP_BODY_MAX + 1)
    status, headers, body, read = call(app, "POST", "/invocations", {"Content-Length": big}, [b"x"])
    assert status == 429 and headers["retry-after"] == "1" and read == 0 and headers["connection"] == "close"
    assert "large requests" in json.loads(body)["error"]["message"]
    settings = Settings(max_payload_mb=1)  # a body under the payload limit is not read to be dropped either
    roomy = LoopRoutes(create_app(settings), app.state, settings)
    roomy.large = roomy.large_limit
    chunks = [b"x" * 20000]
    status, headers, _, read = call(roomy, "POST", "/invocations", {"Content-Length": "20000"}, chunks)
    assert status == 429 and read == 0 and headers["connection"] == "close"
    status, _, _, _ = call(app, "POST", "/invocations", {"Content-Length": "15"}, [b'{"inputs": "a"}'])
    assert status == 503  # a small request still gets in (then finds no model)
    app.large = app.large_limit - 1
    status, _, _, _ = call(app, "POST", "/invocations", {"Content-Length": big}, [b"x"])
    assert status == 413 and app.large == app.large_limit - 1  # let in (then over this test's payload limit)


def test_other_routes_are_flask_s(app):
    status, _, body, _ = call(app, "GET", "/execution-parameters", {})
    assert status == 200 and json.loads(body)["BatchStrategy"] == "MULTI_RECORD"
    status, _, body, _ = call(app, "GET", "/nowhere", {})
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


async def constant_scores(texts, deadline):
    return f"scores of {texts}"


def test_a_large_request_s_steps_run_on_a_thread_with_its_deadline_and_errors_reach_the_loop():
    seen = {}

    def steps(fail: bool):
        seen["deadline"], seen["thread"] = request_deadline.get(), threading.get_ident()
        if fail:
            raise BadRequest("not texts")
        scores = yield "texts", 0.0
        seen["after"] = threading.get_ident()
        return scores

    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(1) as pool:
        assert asyncio.run(drive_on_loop(steps(False), constant_scores, deadline, pool)) == "scores of texts"
        assert seen["deadline"] == deadline  # set on the thread that runs the step
        assert threading.get_ident() not in (seen["thread"], seen["after"])  # both steps off the loop's thread
        with pytest.raises(BadRequest, match="not texts"):
            asyncio.run(drive_on_loop(steps(True), constant_scores, deadline, pool))
        seen.clear()
        with pytest.raises(RequestTimeout):  # its deadline passed while it waited for a thread: no work done
            asyncio.run(drive_on_loop(steps(False), constant_scores, time.monotonic() - 1, pool))
        assert seen == {}
    assert request_deadline.get() is None


def test_a_front_end_that_cannot_start_exits_with_uvicorns_start_failure_code(tmp_path, monkeypatch):
    """Else uvicorn would start it again every half second, forever; with this code it stops the server (exit 1)."""
    from uvicorn.config import STARTUP_FAILURE

    from serving.board import RUN_DIR_ENV
    from serving.frontend.asgi import create

    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path))  # no settings there
    with pytest.raises(SystemExit) as stopped:
        create()
    assert stopped.value.code == STARTUP_FAILURE
