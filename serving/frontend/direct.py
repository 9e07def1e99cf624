"""/invocations (and /endpoints/NAME/invocations) and /ping served straight on WSGI, in front of the Flask app.

They are the path of every inference and every health check. Flask's request and response objects, hooks and
header structures cost host CPU per request on the order of the rest of the front end (BENCHMARKS.md), so these
routes skip them; every other route goes to the Flask app. Both render errors and count and log requests with
the functions below, so a client cannot tell which answered.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from http import HTTPStatus

from serving import metrics
from serving.catalog import check_name
from serving.config import Settings
from serving.errors import BadRequest, NotReady, PayloadTooLarge, ServingError
from serving.frontend import codecs
from serving.service import request_deadline

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

INVOCATIONS = "/invocations"
ENDPOINT_INVOCATIONS = "/endpoints/<name>/invocations"  # the route's name in metrics, as Flask's rule reads
MODEL_INVOKE = "/models/<name>/invoke"  # a multi-model endpoint's; its other /models routes are Flask's
PING = "/ping"
METHODS = {INVOCATIONS: ("POST",), ENDPOINT_INVOCATIONS: ("POST",), MODEL_INVOKE: ("POST",),
           PING: ("GET", "HEAD", "POST")}
ALLOW = {route: ", ".join(sorted((*methods, "OPTIONS"))) for route, methods in METHODS.items()}
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
CUSTOM_ATTRIBUTES_ENV = "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"
TARGET_MODEL_ENV = "HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL"  # boto3 invoke_endpoint(TargetModel=...)
BODY_READ = "toxserve.body_read"  # environ key: True once the body was read whole, False once given up on
REASONS = {status.value: status.phrase for status in HTTPStatus}

Answer = tuple[int, str, bytes, dict[str, str]]  # status, content type, body, extra headers


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def record(method: str, path: str, route: str, status: int, started: float, request_id: str,
           answered_at: float | None = None) -> None:
    """Count and log one answered request (the access log: one JSON line each); its latency ends at `answered_at`
    (default now)."""
    elapsed = (time.monotonic() if answered_at is None else answered_at) - started
    counter, latency = _series(route, status)
    counter.inc()
    latency.observe(elapsed)
    access_log.info(json.dumps({"request_id": request_id, "method": method, "path": path, "status": status,
                                "duration_ms": round(elapsed * 1000, 2)}))


@functools.lru_cache(maxsize=1024)  # routes x statuses: a handful
def _series(route: str, status: int) -> tuple:
    """A route's request counter for `status` and its latency histogram (labels() looks them up under a lock)."""
    return metrics.requests.labels(route, str(status)), metrics.request_latency.labels(route)


def route_of(path: str) -> str | None:
    if path == INVOCATIONS or path == PING:
        return path
    if path.startswith("/endpoints/") and path.endswith(INVOCATIONS):
        name = path[len("/endpoints/"):-len(INVOCATIONS)]
        if name and "/" not in name:
            return ENDPOINT_INVOCATIONS
    if model_in_path(path):
        return MODEL_INVOKE
    return None


def model_in_path(path: str) -> str:
    """NAME of /models/NAME/invoke, else ''."""
    if path.startswith("/models/") and path.endswith("/invoke"):
        name = path[len("/models/"):-len("/invoke")]
        if name and "/" not in name:
            return name
    return ""


class DirectRoutes:
    """The WSGI app `serve` runs in the workers layout: the inference and health routes here, the rest through
    `fallback` (Flask). The engines layout's front ends run serving.frontend.asgi.LoopRoutes instead.

    `state` is the app's serving.frontend.app.ModelState."""

    def __init__(self, fallback: Callable, state, settings: Settings) -> None:
        self.fallback = fallback
        self.state = state
        self.settings = settings

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        route = route_of(path)
        if route is None or route == MODEL_INVOKE and self.state.models is None:
            return self.fallback(environ, start_response)
        started = time.monotonic()
        method = environ.get("REQUEST_METHOD", "GET").upper()  # as werkzeug reads it (a server may pass "post" on)
        token = request_deadline.set(started + self.settings.timeout_s)  # reading the body counts against it
        request_id = environ.get("HTTP_X_AMZN_REQUESTID") or uuid.uuid4().hex
        label = route
        model = ""  # a multi-model endpoint's loaded model this request was for
        try:
            early = answer_method(method, route)
            if early is not None:
                label = label if early[0] == 200 else "unmatched"  # as Flask counts a wrong method
                status, content_type, body, headers = early
            elif route == PING:
                self._report_queue()
                status, content_type, body, headers = ping(self.state)
            elif self.state.models is not None:
                model = model_name(path, environ.get(TARGET_MODEL_ENV, ""))
                status, content_type, body, headers = self._invoke(environ, model)
            else:
                status, content_type, body, headers = self._invoke(environ)
        except Exception as exc:
            status, content_type, body, headers = answer_error(exc, request_id)
        finally:
            request_deadline.reset(token)
        if not self._drained(environ):  # the connection cannot carry another request:
            headers["Connection"] = "close"  # say so (gunicorn drops it but closes anyway)
        finish(headers, environ.get(CUSTOM_ATTRIBUTES_ENV), request_id, self.state.models, model,
               (method, path.encode("latin-1").decode("utf-8", "replace"), label, status, started))
        head = [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers.items()]
        start_response(f"{status} {REASONS.get(status, '')}", head)
        return [b""] if method == "HEAD" else [body]

    def _invoke(self, environ: dict, model: str = "") -> Answer:
        accept = codecs.choose_accept(environ.get("HTTP_ACCEPT"))
        body = self._read_body(environ)
        state = self.state
        if not state.ready:
            raise NotReady(state.why_not_ready)
        handler = state.models.handler(model) if model else state.handler
        if handler is None:
            raise NotReady(state.why_not_ready)
        try:
            reply = handler.invoke(body, environ.get("CONTENT_TYPE") or codecs.JSON, accept,
                                         environ.get(CUSTOM_ATTRIBUTES_ENV))
        finally:
            self._report_queue()
        return 200, reply.content_type, reply.body, dict(reply.headers)

    def _report_queue(self) -> None:
        """The worker's queue gauge, on invocations and on /ping (which SageMaker calls every few seconds), so
        a queue emptied after the last invocation is not reported full. Engines report their own queues."""
        service = self.state.service
        if service is not None and not service.remote:
            metrics.queue_depth.set(service.batcher.queued_texts)

    def _read_body(self, environ: dict) -> bytes:
        """At most the payload limit: a declared length over it is refused unread, a chunked body once it passes it,
        a body shorter than its declared length (the client stopped) is refused, not scored in part."""
        limit = self.settings.max_payload_bytes
        stream = environ["wsgi.input"]
        declared = environ.get("CONTENT_LENGTH")
        if declared:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                raise BadRequest(f"Content-Length must be a non-negative integer, got {declared!r}")
            if length > limit:
                environ[BODY_READ] = False
                raise PayloadTooLarge(too_large(limit))
            body = stream.read(length) if length else b""
            if len(body) != length:
                environ[BODY_READ] = False
                raise BadRequest(f"the request body ended after {len(body)} of its {length} bytes")
        else:
            body = stream.read(limit + 1)
            if len(body) > limit:
                environ[BODY_READ] = False
                raise PayloadTooLarge(too_large(limit))
        environ[BODY_READ] = True
        return body

    def _drained(self, environ: dict) -> bool:
        """Whether the connection is in step for its next request: the body was read, or an answer given before
        reading it (405, 406, 503) could read and drop it within the payload limit. gunicorn would otherwise close
        the connection after the answer while the answer says keep-alive, and a client reusing it loses a request."""
        if BODY_READ not in environ:
            if not environ.get("CONTENT_LENGTH") and "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
                return True  # no body came
            try:
                self._read_body(environ)
            except Exception:  # too large, cut short, a malformed length or a broken stream: never in step again
                environ[BODY_READ] = False
        return environ[BODY_READ]


def answer_method(method: str, route: str) -> Answer | None:
    """OPTIONS and a wrong method are answered before anything else (as Flask answers them)."""
    if method == "OPTIONS":
        return 200, "text/html; charset=utf-8", b"", {"Allow": ALLOW[route]}
    if method not in METHODS[route]:
        status, content_type, body, headers = _error(
            405, "method_not_allowed", "The method is not allowed for the requested URL.")
        return status, content_type, body, {**headers, "Allow": ALLOW[route]}
    return None


def ping(state) -> Answer:
    if state.ready:
        return 200, "text/html; charset=utf-8", b"", {}
    raise NotReady(state.why_not_ready)


def model_name(path: str, target_model: str) -> str:
    """The model a multi-model endpoint's request is for: the path's, else the TargetModel header's."""
    name = model_in_path(path) or target_model
    if not name:
        raise BadRequest("this is a multi-model endpoint: name the model (POST /models/NAME/invoke, or the "
                         "X-Amzn-SageMaker-Target-Model header)")
    return check_name(name)


def answer_error(exc: Exception, request_id: str) -> Answer:
    """A request's error as its answer: a ServingError's status and code, anything else a logged 500."""
    if isinstance(exc, ServingError):
        answer = _error(exc.status, exc.code, exc.message)
        if exc.status == 429:
            answer[3]["Retry-After"] = "1"
        return answer
    log.error("internal error in request %s", request_id, exc_info=exc)
    return _error(500, "internal_error", f"internal error (request id {request_id})")


def finish(headers: dict[str, str], attributes: str | None, request_id: str, models, model: str,
           answered: tuple[str, str, str, int, float]) -> None:
    """The headers every answer carries, then the request counted and logged."""
    answer_headers(headers, attributes, request_id)
    count(request_id, models, model, answered)


def answer_headers(headers: dict[str, str], attributes: str | None, request_id: str) -> None:
    if attributes is not None:
        headers[CUSTOM_ATTRIBUTES] = attributes
    headers["X-Request-Id"] = request_id


def count(request_id: str, models, model: str, answered: tuple[str, str, str, int, float],
          answered_at: float | None = None) -> None:
    """The request counted and logged; `answered` is (method, path, route label, status, started), `model` the
    multi-model endpoint's model it was for (`models` its ModelSet), `answered_at` when its answer was ready (a
    slow client's download is not the server's latency; default now)."""
    try:
        answered_at = time.monotonic() if answered_at is None else answered_at
        record(*answered, request_id, answered_at)
        status, started = answered[3], answered[4]
        if model and model in models.catalog.entries():  # never a label per unknown name sent
            metrics.model_requests.labels(model, str(status)).inc()
            metrics.model_latency.labels(model).observe(answered_at - started)
    except Exception:  # a metrics or log failure must not turn a finished answer into the server's own 500
        log.exception("could not record request %s", request_id)


def _error(status: int, code: str, message: str) -> Answer:
    return status, "application/json", error_body(code, message), {}


def too_large(limit: int) -> str:
    return f"the request body is larger than the payload limit of {limit} bytes"
