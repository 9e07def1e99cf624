"""Validate -> tokenise -> batch -> results: the request path, knowing neither Flask nor torch."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from serving import metrics
from serving.classifier import Classifier, EncodedText
from serving.config import Settings
from serving.engine.batching import BatchedResult, Batcher, PaddingRule
from serving.errors import BadRequest, DeviceFailed, RequestTimeout, UnprocessableInput
from serving.results import text_results, with_python_floats

log = logging.getLogger(__name__)

SCHEMAS = ("serving", "huggingface")
# When the request being served must be answered by (time.monotonic()); the app sets it on arrival, before the
# body is read, so reading, decoding and tokenising count against the request's timeout too.
request_deadline: ContextVar[float | None] = ContextVar("request_deadline", default=None)
WARMUP_LENGTHS = (8, 16, 32, 64, 128, 256, 512)
THRESHOLDS_FILE = "thresholds.json"
T = TypeVar("T")


@dataclass(frozen=True)
class RequestOptions:
    """Per-request choices, from JSON `parameters` or the X-Amzn-SageMaker-Custom-Attributes header.

    Keys: `truncate` (true|false: false refuses over-long texts with 422), `schema`
    (serving|huggingface), `return_all_scores` (huggingface schema: every label per text),
    `top_k` (huggingface schema: best k labels per text).
    """

    truncate: bool = True
    schema: str = "serving"
    return_all_scores: bool = False
    top_k: int | None = None

    @classmethod
    def parse(cls, values: Mapping) -> RequestOptions:
        """From a request's parameters (Handler.invoke has already merged the custom attributes in)."""
        truncate = values.get("truncate", values.get("truncation", True))
        options = cls(
            truncate=_flag(truncate, "truncate"),
            schema=str(values.get("schema", "serving")).lower(),
            return_all_scores=_flag(values.get("return_all_scores", False), "return_all_scores"),
            top_k=_top_k(values.get("top_k")),
        )
        if options.schema not in SCHEMAS:
            raise BadRequest(f"schema must be one of {SCHEMAS}, got {options.schema!r}")
        return options


def parse_custom_attributes(header: str | None) -> dict[str, str]:
    """'k1=v1,k2=v2' (or ';'-separated) -> dict; entries without '=' are ignored."""
    pairs = {}
    for part in (header or "").replace(";", ",").split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            pairs[key.strip().lower()] = value.strip()
    return pairs


def _flag(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise BadRequest(f"{name} must be true or false, got {value!r}")


def _top_k(value) -> int | None:
    if value is None:
        return None
    try:
        top_k = int(value)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"top_k must be a positive integer, got {value!r}") from exc
    if top_k < 1:
        raise BadRequest(f"top_k must be a positive integer, got {value!r}")
    return top_k


@dataclass(frozen=True)
class Classification:
    results: list[dict]
    tokenize_s: float
    queue_s: float
    compute_s: float


def read_thresholds(model_dir: Path | None, labels: Sequence[str]) -> dict[str, float]:
    """Per-label decision thresholds from thresholds.json in the model folder, if it has one."""
    path = model_dir / THRESHOLDS_FILE if model_dir else None
    if path is None or not path.exists():
        return {}
    raw = json.loads(path.read_text())
    thresholds = raw.get("thresholds", raw)
    return {label: float(thresholds[label]) for label in labels if label in thresholds}


class InferenceService:
    """A loaded classifier behind a dynamic batcher: its own (`queue` None: the model is in this process), or the
    engines' (`queue`: a serving.frontend.engines.EngineClient; `classifier` is then the model's text side)."""

    def __init__(self, classifier: Classifier, settings: Settings, model_dir: Path | None = None,
                 on_batch=None, on_device_failure: Callable[[str], None] | None = None, queue=None) -> None:
        self.classifier = classifier
        self.device_failure: str | None = None  # why the device was given up, once it has been
        self.plain_floats = False  # set when user code runs: scores as Python floats, not numpy float32
        self.on_device_failure = on_device_failure
        self._failure_lock = threading.Lock()
        self.timeout_s = settings.timeout_s
        self.thresholds = read_thresholds(model_dir, classifier.labels)
        self.batching = settings.batching == "dynamic" or queue is not None
        self.padding_setting = settings.max_batch_padding
        self.remote = queue is not None
        self.batcher = queue if queue is not None else Batcher(
            self._run_batch, len(classifier.labels),
            max_batch_size=settings.max_batch_size, max_batch_tokens=settings.max_batch_tokens,
            max_batch_delay_ms=settings.max_batch_delay_ms, max_queue_texts=settings.max_queue_texts,
            padding=PaddingRule.choose(settings.max_batch_padding, classifier.device),
            run_inline_when_idle=classifier.runs_on_any_thread, on_batch=on_batch,
        ).start()

    @property
    def labels(self) -> list[str]:
        return list(self.classifier.labels)

    @property
    def alive(self) -> bool:
        return self.device_failure is None and self.batcher.alive

    def _run_batch(self, batch: list[EncodedText]):
        from serving.engine.device import fatal_device_error, predict_splitting_on_oom

        try:
            return predict_splitting_on_oom(self.classifier.predict_encoded, batch)
        except Exception as exc:
            reason = fatal_device_error(exc)
            if reason is None:
                raise
            self._give_up_device(reason)
            raise self._device_failed_error() from exc

    def _device_failed_error(self) -> DeviceFailed:
        return DeviceFailed(f"the device failed ({self.device_failure}); this worker is being replaced, retry")

    def _give_up_device(self, reason: str) -> None:
        """After an error that poisons the CUDA context every later batch would fail the same way: answer 503
        (queued requests too), let /ping say so, count it, and have the worker replaced (on_device_failure)."""
        with self._failure_lock:
            if self.device_failure is not None:
                return
            self.device_failure = reason
        log.error("device failed, giving it up: %s", reason)
        metrics.device_failures.inc()
        metrics.flush()  # the worker is about to be replaced (and may be killed if it does not drain): written now
        self.batcher.fail(self._device_failed_error())
        if self.on_device_failure is not None:
            self.on_device_failure(reason)

    def warmup(self) -> None:
        """Real forwards at each length bucket the server can see, through the batcher, before /ping says
        ready; their timings set the automatic padding rule. The engines warm up their own."""
        if self.remote:
            return
        timings = {}
        for length in [n for n in WARMUP_LENGTHS if n <= self.classifier.max_length] or [1]:
            text = " ".join(["warm"] * length)
            tokens = self.classifier.encode([text])[0].length
            timings[tokens] = min(self.classify([text], RequestOptions()).compute_s for _ in range(3))
        self.batcher.padding = PaddingRule.choose(self.padding_setting, self.classifier.device, timings)
        log.info("warm-up forward ms by tokens %s; %s", {n: round(s * 1000, 2) for n, s in timings.items()},
                 self.batcher.padding)

    def classify(self, texts: Sequence[str], options: RequestOptions) -> Classification:
        return drive(self.classify_steps(texts, options), self.score)

    def classify_steps(self, texts: Sequence[str], options: RequestOptions) -> Steps[Classification]:
        """Admit, tokenise, check; then (batching) yield the encoded texts with the request's deadline and take
        their scores back; then the results. The thread path (classify) and the front end's event loop
        (serving.frontend.asgi) drive the same steps, each waiting for the scores its own way."""
        started = time.monotonic()
        deadline = request_deadline.get() or started + self.timeout_s
        if self.batching:
            self.batcher.admit(len(texts))  # 429 at the door, before the tokeniser's work
        encoded = self.classifier.encode(texts)
        tokenize_s = time.monotonic() - started
        truncated = sum(e.truncated for e in encoded)
        if truncated and not options.truncate:
            raise UnprocessableInput(
                f"{truncated} of {len(texts)} texts exceed the model's limit of {self.classifier.max_length} "
                f"tokens (or {self.classifier.text_char_limit} characters) and truncation was turned off"
            )
        if self.batching:
            outcome = yield encoded, deadline
        else:
            if time.monotonic() > deadline:
                raise RequestTimeout(f"no answer within {self.timeout_s} s")
            compute_started = time.monotonic()
            scores = self._run_batch(list(encoded))
            outcome = BatchedResult(scores, 0.0, time.monotonic() - compute_started)
        results = text_results(self.classifier.labels, outcome.scores, [e.truncated for e in encoded],
                               self.thresholds)
        if self.plain_floats:  # user code sees the results and may hand them to the json module
            results = with_python_floats(results)
        metrics.observe_request(len(results), truncated, tokenize_s, outcome.queue_s, outcome.compute_s)
        return Classification(results, tokenize_s, outcome.queue_s, outcome.compute_s)

    def score(self, encoded: list[EncodedText], deadline: float) -> BatchedResult:
        """Through the batcher, waiting on this thread; a request larger than half the queue (a batch transform's
        mini-batch) goes in parts (see parts())."""
        size, multipart = parts(len(encoded), self.batcher.max_queue_texts)
        futures: list = []
        try:
            for start in range(0, len(encoded), size):
                left = max(deadline - time.monotonic(), 0.0)
                futures.append(self.batcher.submit(encoded[start : start + size], left, wait_for_room=multipart,
                                                   room=size))
            results = [f.result(timeout=max(deadline - time.monotonic(), 0.0)) for f in futures]
        except FutureTimeout as exc:
            raise RequestTimeout(f"no answer within {self.timeout_s} s") from exc
        finally:
            for future in futures:
                future.cancel()  # no-op once settled; parts still queued are dropped before they cost compute
        return joined(results)

    async def score_on_loop(self, encoded: list[EncodedText], deadline: float) -> BatchedResult:
        """score() for a front end's event loop: the engines' replies are awaited, no thread waits."""
        engines: Any = self.batcher  # an EngineClient or ModelQueue: only a front end's service runs on a loop
        size, multipart = parts(len(encoded), engines.max_queue_texts)
        pending: list = []
        with engines.waiting():
            try:
                for start in range(0, len(encoded), size):
                    left = max(deadline - time.monotonic(), 0.0)
                    pending.append(engines.submit_on_loop(encoded[start : start + size], left,
                                                          wait_for_room=multipart, room=size))
                    if multipart:
                        await asyncio.sleep(0)  # packing each part takes a while: let other requests run between
                results = [await p.result(max(deadline - time.monotonic(), 0.0)) for p in pending]
            except TimeoutError as exc:
                raise RequestTimeout(f"no answer within {self.timeout_s} s") from exc
            finally:
                for waiting in pending:
                    waiting.cancel()
        return joined(results)

    def stop(self, timeout_s: float) -> bool:
        return self.batcher.stop(timeout_s)



Steps = Generator[tuple[list[EncodedText], float], BatchedResult, T]  # yields (texts, deadline), gets their scores


def drive(steps: Steps[T], score: Callable[[list[EncodedText], float], BatchedResult]) -> T:
    """Run a request's steps on this thread, scoring what they ask with `score`."""
    try:
        ask = next(steps)
        while True:
            ask = steps.send(score(*ask))
    except StopIteration as done:
        return done.value
    finally:
        steps.close()


def parts(texts: int, max_queue_texts: int) -> tuple[int, bool]:
    """How a request's texts go to the batcher: (part size, whether in several parts). A request larger than half
    the queue goes in parts, the later ones waiting for room, so size alone never answers 429 and other requests
    keep a share: every part (the first too) waits until the queue holds at most half its limit with it, so large
    requests take turns in that half and the other half stays free for small ones."""
    size = max(1, max_queue_texts // 2)
    return size, texts > size


def joined(results: list[BatchedResult]) -> BatchedResult:
    if len(results) == 1:
        return results[0]
    return BatchedResult(np.concatenate([r.scores for r in results]), max(r.queue_s for r in results),
                         sum(r.compute_s for r in results))
