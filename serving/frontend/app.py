"""create_app(settings): the SageMaker contract's app; the only module importing Flask.

/invocations and /ping are answered by serving.frontend.direct before Flask sees them; Flask serves the rest
(execution parameters, the OpenAPI document, metrics, 404s)."""

from __future__ import annotations

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
from serving.errors import BadRequest, ServingError
from serving.frontend.direct import CUSTOM_ATTRIBUTES, DirectRoutes, error_body, record
from serving.frontend.handlers import Handler
from serving.service import InferenceService

log = logging.getLogger(__name__)

OPENAPI = Path(__file__).parent.parent / "openapi.json"  # routes, bodies and errors; tests fuzz the server against it


class ModelState:
    """Readiness: the handler once its model is loaded and warmed up, or the error that stopped it; on a
    multi-model endpoint (`models`, a serving.frontend.models.ModelSet) whether the engines are up."""

    def __init__(self, handler: Handler | None = None, models=None) -> None:
        self.handler = handler
        self.models = models
        self.error: str | None = None

    @property
    def service(self) -> InferenceService | None:
        model = self.handler.model if self.handler else None
        return model if isinstance(model, InferenceService) else None

    @property
    def ready(self) -> bool:
        if self.models is not None:
            return self.models.client.alive
        return self.handler is not None and (self.service is None or self.service.alive)

    @property
    def why_not_ready(self) -> str:
        if self.models is not None:
            return self.models.client.why_not_alive()
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
               handler: Handler | None = None, load_in_background: bool = True, models=None) -> Flask:
    """The WSGI app. With `build_handler` the model loads in the background while /ping answers 503, or,
    with `load_in_background=False` (how `serve` runs), before the app is returned: a gunicorn worker then
    takes no connection until its model is warm, so with several workers no request meets a loading one.
    With `models` (a serving.frontend.models.ModelSet) it is a multi-model endpoint: no model until /models
    loads them."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    state = ModelState(handler, models)
    app.extensions["model_state"] = state
    if build_handler is not None and load_in_background:
        threading.Thread(target=state.load, args=(build_handler,), name="model-loader", daemon=True).start()
    elif build_handler is not None:
        state.load(build_handler)

    @app.before_request
    def start_timer() -> None:
        g.started = time.monotonic()
        g.request_id = request.headers.get("X-Amzn-RequestId") or uuid.uuid4().hex

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

    if models is not None:
        add_model_routes(app, models)

    @app.errorhandler(ServingError)
    def serving_error(exc: ServingError):
        response = error_response(exc.status, exc.code, exc.message)
        if exc.status == 429:
            response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        allowed = getattr(exc, "valid_methods", None)  # a 405 says what is allowed, as the direct routes' do
        if allowed:
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

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
        route = request.url_rule.rule if request.url_rule else "unmatched"
        record(request.method, request.path, route, response.status_code, g.get("started", time.monotonic()),
               g.get("request_id", ""))
        return response

    app.wsgi_app = DirectRoutes(app.wsgi_app, state, settings)  # type: ignore[method-assign]
    return app


def add_model_routes(app: Flask, models) -> None:
    """SageMaker's multi-model API: list, load, describe, unload (invocations go through DirectRoutes)."""

    @app.route("/models", methods=["GET"])
    def list_models():
        return models.listing(request.args.get("next_page_token"))

    @app.route("/models", methods=["POST"])
    def load_model():
        body = request.get_json(silent=True)
        if body is None:
            raise BadRequest('the body must be JSON: {"model_name": NAME, "url": FOLDER}')
        return models.load(body)

    @app.route("/models/<name>", methods=["GET"])
    def describe_model(name: str):
        return models.describe(name)

    @app.route("/models/<name>", methods=["DELETE"])
    def unload_model(name: str):
        return models.unload(name)


def error_response(status: int, code: str, message: str) -> Response:
    return Response(error_body(code, message), status=status, content_type="application/json")
