"""create_app(settings): the SageMaker routes, error rendering and access logs; the only module importing Flask."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving import codecs, metrics
from serving.config import Settings
from serving.errors import NotAcceptable, NotReady, ServingError
from serving.service import InferenceService, RequestOptions

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"


class ModelState:
    """Readiness: the service once loaded and warmed up, or the error that stopped it."""

    def __init__(self) -> None:
        self.service: InferenceService | None = None
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self.service is not None and self.service.alive

    def load(self, build: Callable[[], InferenceService]) -> None:
        started = time.monotonic()
        try:
            service = build()
            service.warmup()
        except Exception as exc:
            self.error = str(exc)
            log.exception("model failed to load; /ping answers 503")
            return
        metrics.model_load_seconds.set(time.monotonic() - started)
        self.service = service
        log.info("model ready in %.1f s", time.monotonic() - started)


def create_app(settings: Settings, build_service: Callable[[], InferenceService] | None = None,
               service: InferenceService | None = None) -> Flask:
    """The WSGI app; with `build_service` the model loads in the background while /ping answers 503."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes
    state = ModelState()
    state.service = service
    app.extensions["model_state"] = state
    if build_service is not None:
        threading.Thread(target=state.load, args=(build_service,), name="model-loader", daemon=True).start()

    @app.before_request
    def start_timer() -> None:
        g.started = time.monotonic()
        g.request_id = request.headers.get("X-Amzn-RequestId") or uuid.uuid4().hex
        g.texts = 0

    @app.route("/ping", methods=["GET", "POST"])
    def ping():
        if state.ready:
            return Response(status=200)
        raise NotReady(f"model failed to load: {state.error}" if state.error else "model is loading")

    @app.route("/execution-parameters", methods=["GET"])
    def execution_parameters():
        return {
            "MaxConcurrentTransforms": max(1, settings.workers) * 2,
            "BatchStrategy": "MULTI_RECORD",
            "MaxPayloadInMB": int(settings.max_payload_mb),
        }

    @app.route("/metrics", methods=["GET"])
    def metrics_page():
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.route("/invocations", methods=["POST"])
    @app.route("/endpoints/<name>/invocations", methods=["POST"])
    def invocations(name: str | None = None):
        accept = codecs.choose_accept(request.headers.get("Accept"))
        decoded = codecs.decode(request.get_data(cache=False), request.headers.get("Content-Type"))
        g.texts = len(decoded.texts)
        options = RequestOptions.parse(decoded.parameters, request.headers.get(CUSTOM_ATTRIBUTES))
        if options.schema == "huggingface" and accept != codecs.JSON:
            raise NotAcceptable("the huggingface schema answers application/json only")
        if not state.ready or state.service is None:
            raise NotReady("model is not ready")
        result = state.service.classify(decoded.texts, options)
        return render(result, decoded, options, accept, state.service.labels)

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
        if state.service is not None:
            metrics.queue_depth.set(state.service.batcher.queued_texts)
        access_log.info(json.dumps({
            "request_id": g.get("request_id"), "method": request.method, "path": request.path,
            "status": response.status_code, "texts": g.get("texts", 0), "duration_ms": round(elapsed * 1000, 2),
        }))
        return response

    return app


def render(result, decoded: codecs.DecodedRequest, options: RequestOptions, accept: str, labels: list[str]):
    if options.schema == "huggingface":
        body = json.dumps(codecs.huggingface_output(
            result.results, decoded.single, options.top_k, options.return_all_scores)).encode()
    else:
        body = codecs.ENCODERS[accept](result.results, labels)
    truncated = sum(r["truncated"] for r in result.results)
    metrics.texts.inc(len(result.results))
    metrics.truncated_texts.inc(truncated)
    for stage, seconds in (("tokenize", result.tokenize_s), ("queue", result.queue_s),
                           ("inference", result.compute_s)):
        metrics.stage_latency.labels(stage).observe(seconds)
    response = Response(body, content_type=accept)
    response.headers["X-Tokenize-Time-Ms"] = f"{result.tokenize_s * 1000:.2f}"
    response.headers["X-Queue-Time-Ms"] = f"{result.queue_s * 1000:.2f}"
    response.headers["X-Inference-Time-Ms"] = f"{result.compute_s * 1000:.2f}"
    response.headers["X-Truncated-Texts"] = str(truncated)
    return response


def error_response(status: int, code: str, message: str) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return Response(body, status=status, content_type="application/json")
