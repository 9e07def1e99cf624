"""/invocations (and /endpoints/NAME/invocations) and /ping served straight on WSGI, in front of the Flask app.

They are the path of every inference and every health check. Flask's request and response objects, hooks and
header structures cost host CPU per request on the order of the rest of the front end (BENCHMARKS.md), so these
routes skip them; every other route goes to the Flask app. Both render errors and count and log requests with
the functions below, so a client cannot tell which answered.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from http import HTTPStatus

from serving import metrics
from serving.config import Settings
from serving.errors import BadRequest, NotReady, PayloadTooLarge, ServingError
from serving.frontend import codecs
from serving.service import request_deadline

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

INVOCATIONS = "/invocations"
ENDPOINT_INVOCATIONS = "/endpoints/<name>/invocations"  # the route's name in metrics, as Flask's rule reads
PING = "/ping"
METHODS = {INVOCATIONS: ("POST",), ENDPOINT_INVOCATIONS: ("POST",), PING: ("GET", "HEAD", "POST")}
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
CUSTOM_ATTRIBUTES_ENV = "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"
REASONS = {status.value: status.phrase for status in HTTPStatus}

Answer = tuple[int, str, bytes, dict[str, str]]  # status, content type, body, extra headers


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def record(method: str, path: str, route: str, status: int, started: float, request_id: str) -> None:
    """Count and log one answered request (the access log: one JSON line each)."""
    elapsed = time.monotonic() - started
    metrics.requests.labels(route, str(status)).inc()
    metrics.request_latency.labels(route).observe(elapsed)
    access_log.info(json.dumps({"request_id": request_id, "method": method, "path": path, "status": status,
                                "duration_ms": round(elapsed * 1000, 2)}))


def route_of(path: str) -> str | None:
    if path == INVOCATIONS or path == PING:
        return path
    if path.startswith("/endpoints/") and path.endswith(INVOCATIONS):
        name = path[len("/endpoints/"):-len(INVOCATIONS)]
        if name and "/" not in name:
            return ENDPOINT_INVOCATIONS
    return None


class DirectRoutes:
    """The WSGI app `serve` runs: the inference and health routes here, the rest through `fallback` (Flask).

    `state` is the app's serving.frontend.app.ModelState."""

    def __init__(self, fallback: Callable, state, settings: Settings) -> None:
        self.fallback = fallback
        self.state = state
        self.settings = settings

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        route = route_of(path)
        if route is None:
            return self.fallback(environ, start_response)
        started = time.monotonic()
        method = environ.get("REQUEST_METHOD", "GET")
        token = request_deadline.set(started + self.settings.timeout_s)  # reading the body counts against it
        request_id = environ.get("HTTP_X_AMZN_REQUESTID") or uuid.uuid4().hex
        try:
            if method not in METHODS[route]:
                status, content_type, body, headers = self._error(
                    405, "method_not_allowed", "The method is not allowed for the requested URL.")
                headers["Allow"] = ", ".join(METHODS[route])
            elif route == PING:
                status, content_type, body, headers = self._ping()
            else:
                status, content_type, body, headers = self._invoke(environ)
        except ServingError as exc:
            status, content_type, body, headers = self._error(exc.status, exc.code, exc.message)
            if exc.status == 429:
                headers["Retry-After"] = "1"
        except Exception:
            log.exception("internal error in request %s", request_id)
            status, content_type, body, headers = self._error(
                500, "internal_error", f"internal error (request id {request_id})")
        finally:
            request_deadline.reset(token)
        attributes = environ.get(CUSTOM_ATTRIBUTES_ENV)
        if attributes is not None:
            headers[CUSTOM_ATTRIBUTES] = attributes
        headers["X-Request-Id"] = request_id
        head = [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers.items()]
        start_response(f"{status} {REASONS.get(status, '')}", head)
        record(method, path, route, status, started, request_id)
        return [b""] if method == "HEAD" else [body]

    def _ping(self) -> Answer:
        if self.state.ready:
            return 200, "text/html; charset=utf-8", b"", {}
        raise NotReady(self.state.why_not_ready)

    def _invoke(self, environ: dict) -> Answer:
        accept = codecs.choose_accept(environ.get("HTTP_ACCEPT"))
        body = self._read_body(environ)
        state = self.state
        if not state.ready or state.handler is None:
            raise NotReady(state.why_not_ready)
        try:
            reply = state.handler.invoke(body, environ.get("CONTENT_TYPE") or codecs.JSON, accept,
                                         environ.get(CUSTOM_ATTRIBUTES_ENV))
        finally:
            service = state.service
            if service is not None and not service.remote:  # engines report their own queues
                metrics.queue_depth.set(service.batcher.queued_texts)
        return 200, reply.content_type, reply.body, dict(reply.headers)

    def _read_body(self, environ: dict) -> bytes:
        """At most the payload limit: a declared length over it is refused unread, a chunked body once it passes it."""
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
                raise PayloadTooLarge(too_large(limit))
            return stream.read(length) if length else b""
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(too_large(limit))
        return body

    def _error(self, status: int, code: str, message: str) -> Answer:
        return status, "application/json", error_body(code, message), {}


def too_large(limit: int) -> str:
    return f"the request body is larger than the payload limit of {limit} bytes"
