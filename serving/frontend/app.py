"""create_app(settings): the SageMaker routes, error rendering and access logs; the only module importing Flask."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving import metrics
from serving.config import Settings
from serving.errors import NotReady, ServingError
from serving.frontend import codecs
from serving.frontend.handlers import Handler
from serving.service import InferenceService, request_deadline

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
OPENAPI = Path(__file__).parent.parent / "openapi.json"  # routes, bodies and errors; tests fuzz the server against it


class ModelState:
    """Readiness: the handler once its model is loaded and warmed up, or the error that stopped it."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.error: str | None = None

    @property
    def service(self) -> InferenceService | None:
        model = self.handler.model if self.handler else None
        return model if isinstance(model, InferenceService) else None

    @property
    def ready(self) -> bool:
        return self.handler is not None and (self.service is None or self.service.alive)

    @property
    def why_not_ready(self) -> str:
        if self.error:
            return f"model failed to load: {self.error}"
        service = self.service
        if service is not None and service.remote:
            return service.batcher.why_not_alive()  # type: ignore[union-attr]
        if service is not None and service.device_failure:
            return f"device failed: {service.device_failure}; the worker is being replaced"
        if service is not None:
            return "the server is shutting down"
        return "model is loading"

    def load(self, build: Callable[[], Handler]) -> None:
        started = time.monotonic()
        try:
            handler = build()
            if isinstance(handler.model, InferenceService):
                handler.model.warmup()
        except Exception as exc:
            self.error = str(exc)
            log.exception("model failed to load; /ping answers 503")
            return
        metrics.model_load_seconds.set(time.monotonic() - started)
        self.handler = handler
        log.info("model ready in %.1f s", time.monotonic() - started)


def create_app(settings: Settings, build_handler: Callable[[], Handler] | None = None,
               handler: Handler | None = None, load_in_background: bool = True) -> Flask:
    """The WSGI app. With `build_handler` the model loads in the background while /ping answers 503, or,
    with `load_in_background=False` (how `serve` runs), before the app is returned: a gunicorn worker then
    takes no connection until its model is warm, so with several workers no request meets a loading one."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    state = ModelState(handler)
    app.extensions["model_state"] = state
    if build_handler is not None and load_in_background:
        threading.Thread(target=state.load, args=(build_handler,), name="model-loader", daemon=True).start()
    elif build_handler is not None:
        state.load(build_handler)

    @app.before_request
    def start_timer() -> None:
        g.started = time.monotonic()
        g.deadline_token = request_deadline.set(g.started + settings.timeout_s)
        g.request_id = request.headers.get("X-Amzn-RequestId") or uuid.uuid4().hex

    @app.teardown_request
    def forget_deadline(_error) -> None:
        """The deadline belongs to this request: the thread's next use (another request, a test) must not see it."""
        token = g.pop("deadline_token", None)
        if token is not None:
            request_deadline.reset(token)

    @app.route("/ping", methods=["GET", "POST"])
    def ping():
        if state.ready:
            return Response(status=200)
        raise NotReady(state.why_not_ready)

    @app.route("/execution-parameters", methods=["GET"])
    def execution_parameters():
        # SageMaker reads MaxPayloadInMB 0 as "no limit" and takes whole megabytes only: at least 1.
        return {
            "MaxConcurrentTransforms": max(1, settings.workers) * 2,
            "BatchStrategy": "MULTI_RECORD",
            "MaxPayloadInMB": max(1, int(settings.max_payload_mb)),
        }

    @app.route("/openapi.json", methods=["GET"])
    def openapi():
        return Response(OPENAPI.read_bytes(), content_type="application/json")

    @app.route("/metrics", methods=["GET"])
    def metrics_page():
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.route("/invocations", methods=["POST"])
    @app.route("/endpoints/<name>/invocations", methods=["POST"])
    def invocations(name: str | None = None):
        accept = codecs.choose_accept(request.headers.get("Accept"))
        body = request.get_data(cache=False)
        if not state.ready or state.handler is None:
            raise NotReady(state.why_not_ready)
        reply = state.handler.invoke(body, request.headers.get("Content-Type") or codecs.JSON, accept,
                                     request.headers.get(CUSTOM_ATTRIBUTES))
        return Response(reply.body, content_type=reply.content_type, headers=reply.headers)

    @app.errorhandler(ServingError)
    def serving_error(exc: ServingError):
        response = error_response(exc.status, exc.code, exc.message)
        if exc.status == 429:
            response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        log.exception("internal error in request %s", g.get("request_id"))
        return error_response(500, "internal_error", f"internal error (request id {g.get('request_id')})")

    @app.after_request
    def finish(response: Response) -> Response:
        attributes = request.headers.get(CUSTOM_ATTRIBUTES)
        if attributes is not None:
            response.headers[CUSTOM_ATTRIBUTES] = attributes
        response.headers["X-Request-Id"] = g.get("request_id", "")
        elapsed = time.monotonic() - g.get("started", time.monotonic())
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.request_latency.labels(route).observe(elapsed)
        if state.service is not None and not state.service.remote:  # engines report their own queues
            metrics.queue_depth.set(state.service.batcher.queued_texts)
        access_log.info(json.dumps({
            "request_id": g.get("request_id"), "method": request.method, "path": request.path,
            "status": response.status_code, "duration_ms": round(elapsed * 1000, 2),
        }))
        return response

    return app


def error_response(status: int, code: str, message: str) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return Response(body, status=status, content_type="application/json")
