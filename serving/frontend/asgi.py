"""The front-end process's app (engines layout): ASGI on uvicorn's event loop, the Flask app behind it.

Invocations and /ping are answered on the loop (LoopRoutes): a request waiting for the engines holds no thread.
A WSGI front end needs a thread per waiting request, and at the concurrency a GPU needs, the threads' turns at
the GIL cost more host CPU than the request's own work (BENCHMARKS.md). Every other route (the /models API,
metrics, OpenAPI, 404s) goes to the same Flask app as the workers layout, on threads (a2wsgi); a large request's
decoding, tokenising and answer run on a thread too, so the loop stays free for /ping and the other requests.

uvicorn imports `create` in each front-end process (serving.supervisor starts them); the server's settings and its
run folder (channel sockets, status board) come from the folder named by serving.board.RUN_DIR_ENV.
"""

from __future__ import annotations

import asyncio
import logging.config
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from a2wsgi import WSGIMiddleware
from flask import Flask
from uvicorn.config import STARTUP_FAILURE

from serving.board import RUN_DIR_ENV
from serving.channel import BatchedResult
from serving.classifier import Classifier, EncodedText, Scores
from serving.config import Settings
from serving.errors import BadRequest, BodyTimeout, NotReady, PayloadTooLarge, QueueFull, RequestTimeout
from serving.frontend import codecs
from serving.frontend.app import ModelState
from serving.frontend.direct import (
    MODEL_INVOKE,
    PING,
    Answer,
    answer_error,
    answer_headers,
    answer_method,
    count,
    model_name,
    ping,
    route_of,
    too_large,
)
from serving.models.rnn_text import RNNText
from serving.models.roberta_text import PARALLELISM_ENV, RobertaText
from serving.service import Steps, request_deadline

T = TypeVar("T")
# bytes: a larger request's steps run on a thread (about 75 texts of 40 words; at most some 4,000 one-letter texts,
# tens of milliseconds of work on the loop)
LOOP_BODY_MAX = 16 * 1024
READ_HEADERS = {b"content-length", b"content-type", b"accept", b"transfer-encoding", b"x-amzn-requestid",
                b"x-amzn-sagemaker-custom-attributes", b"x-amzn-sagemaker-target-model"}


class _NoModel:
    def predict_encoded(self, batch: Sequence[EncodedText]) -> Scores:
        raise RuntimeError("a front end has no model: the engines score")


class RobertaTextSide(_NoModel, RobertaText):
    """The RoBERTa folder's tokenizer, labels and limits, without its weights."""


class RNNTextSide(_NoModel, RNNText):
    """The LSTM folder's word splitting and memory-mapped fastText vectors, without the LSTM."""


def load_text_side(model_dir: Path, settings: Settings) -> Classifier:
    from serving.artifacts import detect_family, with_input_caps

    side = RNNTextSide if detect_family(model_dir) == "rnn" else RobertaTextSide
    text = side(model_dir, "engines", settings.max_length or None)
    return with_input_caps(text, settings.max_text_chars, settings.max_word_chars)


class LoopRoutes:
    """The ASGI app a front end runs: invocations and /ping here, the rest through `fallback` (Flask on threads).

    Answers, errors, headers, logs and metrics are serving.frontend.direct's, so a client cannot tell which
    layout answered."""

    def __init__(self, fallback: Flask, state: ModelState, settings: Settings) -> None:
        # as many threads as a WSGI front end had: a model load holds one for its whole length
        self.fallback = WSGIMiddleware(cast(Any, fallback), workers=settings.threads)
        self.state = state
        self.settings = settings
        pool = max(4, settings.threads // 4)
        self.threads = ThreadPoolExecutor(pool, thread_name_prefix="large-request")
        # large requests held at once (read, waiting for a thread or on one): each may hold a payload-sized body,
        # and only requests waiting on the engines count against `threads`
        self.large_limit = 2 * pool
        self.large = 0
        # a model's text side loads on a pool of its own: requests waiting for one never hold up large requests
        self.builds = ThreadPoolExecutor(4, thread_name_prefix="text-side")

    async def __call__(self, scope: Any, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "/")
        route = route_of(path) if scope["type"] == "http" else None
        if route is None or route == MODEL_INVOKE and self.state.models is None:
            return await self.fallback(scope, receive, send)  # Flask, on a2wsgi's threads
        started = time.monotonic()
        method = scope["method"].upper()
        headers = {name.decode(): value.decode("latin-1") for name, value in scope["headers"] if name in READ_HEADERS}
        request_id = headers.get("x-amzn-requestid") or uuid.uuid4().hex
        label = route
        model = ""  # a multi-model endpoint's loaded model this request was for
        # reading the body counts against the request's time: a client that stalls holds it no longer
        body = Body(receive, headers, self.settings.max_payload_bytes, started + self.settings.timeout_s)
        try:
            early = answer_method(method, route)
            if early is not None:
                label = label if early[0] == 200 else "unmatched"  # as Flask counts a wrong method
                status, content_type, payload, extra = early
            elif route == PING:
                status, content_type, payload, extra = ping(self.state)
            else:
                if self.state.models is not None:
                    model = model_name(path, headers.get("x-amzn-sagemaker-target-model", ""))
                status, content_type, payload, extra = await self._invoke(body, headers, model, body.deadline)
        except Exception as exc:
            status, content_type, payload, extra = answer_error(exc, request_id)
        answered_at = time.monotonic()  # a client-paced read of a body answered early is not the server's latency
        if not await body.drained():  # the connection cannot carry another request: say so
            extra["Connection"] = "close"
        answer_headers(extra, headers.get("x-amzn-sagemaker-custom-attributes"), request_id)
        head = [(b"content-type", content_type.encode()), (b"content-length", str(len(payload)).encode()),
                *((name.encode("latin-1"), value.encode("latin-1")) for name, value in extra.items())]
        try:
            await send({"type": "http.response.start", "status": status, "headers": head})
            await send({"type": "http.response.body", "body": b"" if method == "HEAD" else payload})
        finally:  # counted and logged once answered: the client does not wait for the access log and the metrics
            count(request_id, self.state.models, model, (method, path, label, status, started), answered_at)

    async def _invoke(self, body: Body, headers: dict[str, str], model: str, deadline: float) -> Answer:
        try:
            large = int(headers["content-length"]) > LOOP_BODY_MAX
        except (KeyError, ValueError):  # no length (a malformed one is refused when the body is read)
            large = "chunked" in headers.get("transfer-encoding", "").lower()
        if large and self.large >= self.large_limit:
            body.complete = False  # never read, not even to keep the connection: it closes after the 429
            raise QueueFull(f"{self.large} large requests are being read or scored by this front end (limit "
                            f"{self.large_limit}); retry later")
        self.large += large
        try:
            return await self._answer(body, headers, model, deadline)
        finally:
            self.large -= large

    async def _answer(self, body: Body, headers: dict[str, str], model: str, deadline: float) -> Answer:
        accept = codecs.choose_accept(headers.get("accept"))
        data = await body.read()
        state = self.state
        if not state.ready:
            raise NotReady(state.why_not_ready)
        if model:  # its text side is loaded on a thread the first time
            handler = state.models.built(model) or await asyncio.get_running_loop().run_in_executor(
                self.builds, state.models.handler, model)
        else:
            handler = state.handler
        if handler is None:
            raise NotReady(state.why_not_ready)
        steps = handler.steps(data, content_type=headers.get("content-type") or codecs.JSON, accept=accept,
                              custom_attributes=headers.get("x-amzn-sagemaker-custom-attributes"))
        # a large body's decoding, tokenising and answer take long enough to hold up /ping: a thread runs them
        reply = await drive_on_loop(steps, handler.model.score_on_loop, deadline,
                                    self.threads if len(data) > LOOP_BODY_MAX else None)
        return 200, reply.content_type, reply.body, dict(reply.headers)


async def drive_on_loop(steps: Steps[T], score: Callable[[list[EncodedText], float], Awaitable[BatchedResult]],
                        deadline: float, executor: ThreadPoolExecutor | None = None) -> T:
    """serving.service.drive for the event loop: the scores are awaited. Each step runs with the request's deadline
    set (and unset before the loop runs anything else), whatever context the server runs requests in; with
    `executor`, on one of its threads (a generator may resume on any thread, one at a time)."""
    loop = asyncio.get_running_loop()
    value: Any = None
    try:
        while True:
            if executor is None:
                done, asked = _step(steps, value, deadline)
            else:
                done, asked = await loop.run_in_executor(executor, _step, steps, value, deadline)
            if done:
                return asked
            value = await score(*asked)
    finally:
        # cancelled while a thread runs a step: that thread finishes it, and the generator is dropped after
        if not getattr(steps, "gi_running", False):
            steps.close()


def _step(steps: Steps, value: Any, deadline: float) -> tuple[bool, Any]:
    """(False, what the steps ask for) or (True, their result): a StopIteration cannot cross a future. A request
    whose deadline passed while it waited for a thread is not decoded and tokenised for nothing."""
    if value is None and time.monotonic() > deadline:
        raise RequestTimeout("the request's deadline passed before the front end could start on it")
    token = request_deadline.set(deadline)
    try:
        return False, steps.send(value)
    except StopIteration as done:
        return True, done.value
    finally:
        request_deadline.reset(token)


class Body:
    """A request's body from ASGI messages, read as serving.frontend.direct reads it from WSGI: at most the
    payload limit, a short body refused, not scored in part; drained() keeps the connection in step when an
    answer came before the body was read. A body not whole by `deadline` (time.monotonic()) is given up on: 408,
    and the connection closes."""

    def __init__(self, receive: Callable, headers: dict[str, str], limit: int, deadline: float) -> None:
        self.receive = receive
        self.headers = headers
        self.limit = limit
        self.deadline = deadline
        self.complete: bool | None = None  # True once read whole, False once given up on

    async def read(self) -> bytes:
        # asyncio.timeout costs a few us per request (a timer armed and cancelled); a sweep over the bodies being
        # read, or a timer in the protocol only for requests that do not arrive in one read, would cost less
        timeout = asyncio.timeout(max(self.deadline - time.monotonic(), 0.0))
        try:
            async with timeout:
                return await self._read()
        except TimeoutError:
            if not timeout.expired():
                raise
            self.complete = False
            raise BodyTimeout("the request body had not arrived whole by the request's deadline") from None

    async def _read(self) -> bytes:
        declared = self.headers.get("content-length")
        length = None
        if declared:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                self.complete = False
                raise BadRequest(f"Content-Length must be a non-negative integer, got {declared!r}")
            if length > self.limit:
                self.complete = False
                raise PayloadTooLarge(too_large(self.limit))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":  # the client went away
                self.complete = False
                raise BadRequest(f"the request body ended after {size} bytes")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                self.complete = False
                raise PayloadTooLarge(too_large(self.limit))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if length is not None and size != length:
            self.complete = False
            raise BadRequest(f"the request body ended after {size} of its {length} bytes")
        self.complete = True
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def drained(self) -> bool:
        if self.complete is None:
            if not self.headers.get("content-length") and \
                    "chunked" not in self.headers.get("transfer-encoding", "").lower():
                return True  # no body came
            try:
                await self.read()
            except Exception:  # too large, cut short, a malformed length: never in step again
                self.complete = False
        return bool(self.complete)


def create() -> LoopRoutes:
    """The app, or the process ends with uvicorn's start-failure code (the server then stops, exit 1, instead of
    starting front ends that fail the same way forever)."""
    try:
        return _create()
    except Exception:
        logging.getLogger(__name__).exception("the front end could not start")
        sys.exit(STARTUP_FAILURE)


def _create() -> LoopRoutes:
    from serving.engine.main import read_settings
    from serving.frontend.app import create_app
    from serving.frontend.engines import EngineClient
    from serving.frontend.handlers import Handler
    from serving.server import LOG_CONFIG
    from serving.service import InferenceService

    # one front end per core: the tokenizers library's thread pool in each would take turns at the same cores as the
    # other front ends, and handing it one text costs more than encoding it in place
    os.environ.setdefault(PARALLELISM_ENV, "false")
    run_dir = Path(os.environ[RUN_DIR_ENV])
    settings = read_settings(run_dir)
    logging.config.dictConfig(LOG_CONFIG)
    model_dir = Path(settings.model_dir or ".")

    client = EngineClient(run_dir, settings.max_queue_texts, max_in_flight=settings.threads)
    if settings.multi_model:
        from serving.frontend.models import ModelSet

        app = create_app(settings, models=ModelSet(run_dir, settings, client))
    else:
        def build() -> Handler:
            return Handler(InferenceService(load_text_side(model_dir, settings), settings, model_dir, queue=client))

        app = create_app(settings, build_handler=build, load_in_background=False)
    return LoopRoutes(app, app.extensions["model_state"], settings)
