"""The invocation steps, with the SageMaker toolkits' hooks: model_fn, input_fn, predict_fn, output_fn, transform_fn.

A model folder may carry `code/inference.py` (or the file named by SAGEMAKER_PROGRAM); each
function it defines replaces that step, the others keep the defaults below.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagemaker_inference import parameters as sm

from serving.errors import BadRequest, ModelLoadError, NotAcceptable, QueueFull, RequestTimeout
from serving.frontend import codecs
from serving.results import dumps, with_python_floats
from serving.service import (
    Classification,
    InferenceService,
    RequestOptions,
    Steps,
    drive,
    parse_custom_attributes,
    request_deadline,
)

log = logging.getLogger(__name__)

HOOKS = ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn")
DEFAULT_PROGRAM = "inference.py"


@dataclass(frozen=True)
class Prediction:
    """What the default predict_fn returns and the default output_fn renders."""

    classification: Classification
    request: codecs.DecodedRequest
    options: RequestOptions
    labels: list[str]


@dataclass(frozen=True)
class Reply:
    body: bytes
    content_type: str
    headers: dict[str, str]


def default_input_fn(input_data: bytes, content_type: str) -> codecs.DecodedRequest:
    return codecs.decode(input_data, content_type)


def default_predict_fn(data: Any, model: Any) -> Any:
    """Our service classifies through the batcher; a user model_fn's object is called with the texts."""
    request = as_request(data)
    if isinstance(model, InferenceService):
        options = RequestOptions.parse(request.parameters)
        return Prediction(model.classify(request.texts, options), request, options, model.labels)
    return model(request.texts)


def default_output_fn(prediction: Any, accept: str) -> tuple[bytes, str]:
    if not isinstance(prediction, Prediction):
        return json.dumps(prediction, default=_jsonable).encode(), codecs.JSON
    results, options = prediction.classification.results, prediction.options
    if options.schema == "huggingface":
        if accept != codecs.JSON:
            raise NotAcceptable("the huggingface schema answers application/json only")
        answer = codecs.huggingface_output(results, prediction.request.single, options.top_k,
                                           options.return_all_scores)
        return dumps(answer), codecs.JSON
    return codecs.ENCODERS[accept](results, prediction.labels), accept


def as_request(data: Any) -> codecs.DecodedRequest:
    """Whatever an input_fn returned, as texts + parameters (a DecodedRequest, str, list or JSON-like dict)."""
    if isinstance(data, codecs.DecodedRequest):
        return data
    if isinstance(data, (str, list, dict)):
        return codecs.decode(json.dumps(data).encode(), codecs.JSON)
    raise BadRequest(f"input_fn returned {type(data).__name__}; expected texts")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def has_user_code(model_dir: Path) -> bool:
    """Whether the folder carries user code, found without importing it (the supervisor must not run it)."""
    return (model_dir / "code" / (os.environ.get(sm.USER_PROGRAM_ENV) or DEFAULT_PROGRAM)).is_file()


def load_user_module(model_dir: Path | None, program: str | None = None) -> Any | None:
    """The module at code/<program> in the model folder, or None when the folder has none."""
    if model_dir is None:
        return None
    program = program or os.environ.get(sm.USER_PROGRAM_ENV) or DEFAULT_PROGRAM
    path = model_dir / "code" / program
    if not path.is_file():
        if program != DEFAULT_PROGRAM:
            raise ModelLoadError(f"{path}: {sm.USER_PROGRAM_ENV} names a file the model folder does not have")
        return None
    sys.path.insert(0, str(path.parent))  # so the user code can import its own helpers
    spec = importlib.util.spec_from_file_location(f"user_inference_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelLoadError(f"{path}: failed to import ({type(exc).__name__}: {exc})") from exc
    found = [name for name in HOOKS if callable(getattr(module, name, None))]
    log.info("user code %s overrides %s", path, ", ".join(found) or "nothing")
    return module


class OneAtATime:
    """User code runs one request at a time per worker, as the SageMaker toolkits run it (a module may declare
    `THREAD_SAFE = True` to opt out). Requests take turns in arrival order (a plain lock lets a late arrival
    overtake, and under steady load starve, an early one); at most `max_waiting` wait (then 429), none longer
    than its deadline (504)."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()
        self._busy = False

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        me = object()
        with self._cond:
            if len(self._queue) >= self.max_waiting:
                raise QueueFull(f"{len(self._queue)} requests wait for the model's code (limit {self.max_waiting}); "
                                "retry later")
            self._queue.append(me)
            deadline = request_deadline.get()
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not self._cond.wait_for(lambda: not self._busy and self._queue[0] is me, left):
                self._queue.remove(me)
                self._cond.notify_all()  # the one behind may be first now
                raise RequestTimeout("request timed out waiting for the model's code")
            self._queue.popleft()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def user_code_waiting_limit(max_queue_texts: int, threads: int) -> int:
    """Requests that may wait for one worker's user code: the queue limit, but at most half the worker's request
    threads, so that 429 comes back before every thread is taken (past that, requests wait unseen in the listen
    backlog) and /ping still finds a free thread."""
    return max(1, min(max_queue_texts, threads // 2))


class Handler:
    """Runs one invocation: input_fn -> predict_fn -> output_fn (or transform_fn), user hooks first."""

    def __init__(self, model: Any, user_module: Any | None = None, max_waiting: int = 2048) -> None:
        self.model = model
        hook: Callable[[str], Any] = lambda name: getattr(user_module, name, None) if user_module else None  # noqa: E731
        self.input_fn = hook("input_fn") or default_input_fn
        self.predict_fn = hook("predict_fn") or default_predict_fn
        self.output_fn = hook("output_fn") or default_output_fn
        self.transform_fn = hook("transform_fn")
        self.user_output = self.output_fn is not default_output_fn
        runs_user_code = user_module is not None and (
            any(hook(name) for name in HOOKS) or not isinstance(model, InferenceService))
        if runs_user_code and isinstance(model, InferenceService):
            model.plain_floats = True  # a user transform_fn or predict_fn may json.dumps model.classify's results
        serial = runs_user_code and not getattr(user_module, "THREAD_SAFE", False)
        self.gate = OneAtATime(max_waiting) if serial else None

    def invoke(self, body: bytes, content_type: str, accept: str, custom_attributes: str | None) -> Reply:
        if self.gate is None:
            return self._invoke(body, content_type, accept, custom_attributes)
        with self.gate.turn():
            return self._invoke(body, content_type, accept, custom_attributes)

    def _invoke(self, body: bytes, content_type: str, accept: str, custom_attributes: str | None) -> Reply:
        steps = self.steps(body, content_type, accept, custom_attributes)
        return drive(steps, self.model.score) if isinstance(self.model, InferenceService) else drive(steps, _never)

    def steps(self, body: bytes, content_type: str, accept: str, custom_attributes: str | None) -> Steps[Reply]:
        """The invocation as steps (serving.service.drive runs them): the scores are asked of the caller."""
        if self.transform_fn is not None:
            return _reply(self.transform_fn(self.model, body, content_type, accept), accept)
        data = self.input_fn(body, content_type)
        if isinstance(data, codecs.DecodedRequest) and custom_attributes:
            data = dataclasses.replace(
                data, parameters={**parse_custom_attributes(custom_attributes), **data.parameters})
        if self.predict_fn is default_predict_fn and isinstance(self.model, InferenceService):
            request = as_request(data)
            options = RequestOptions.parse(request.parameters)
            classification = yield from self.model.classify_steps(request.texts, options)
            prediction: Any = Prediction(classification, request, options, self.model.labels)
        else:
            prediction = self.predict_fn(data, self.model)
        shown = prediction
        if self.user_output and isinstance(prediction, Prediction):  # user code may json.dumps the scores
            shown = dataclasses.replace(prediction, classification=dataclasses.replace(
                prediction.classification, results=with_python_floats(prediction.classification.results)))
        reply = _reply(self.output_fn(shown, accept), accept)
        if isinstance(prediction, Prediction):
            reply.headers.update(timing_headers(prediction.classification))
        return reply


def _never(*_: Any) -> Any:
    raise AssertionError("only an InferenceService's steps ask for scores")


def _reply(output: Any, accept: str) -> Reply:
    """output_fn may return bytes, str, or (body, content type) as the toolkits allow."""
    body, content_type = output if isinstance(output, tuple) else (output, accept)
    if isinstance(body, str):
        body = body.encode()
    return Reply(body, content_type, {})


def timing_headers(result: Classification) -> dict[str, str]:
    return {
        "X-Tokenize-Time-Ms": f"{result.tokenize_s * 1000:.2f}",
        "X-Queue-Time-Ms": f"{result.queue_s * 1000:.2f}",
        "X-Inference-Time-Ms": f"{result.compute_s * 1000:.2f}",
        "X-Truncated-Texts": str(sum(r["truncated"] for r in result.results)),
    }
