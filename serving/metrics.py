"""Every Prometheus metric of the server, prefixed `toxserve_`; multiprocess-safe (gunicorn workers, front ends and
engines each write their own files).

In multiprocess mode a counter's or histogram's increments are added up in memory and written to the process's
file every FLUSH_S, at exit, and before this process renders /metrics: prometheus_client would write the mapped
file (and check the pid) on every increment, several times per request on the request path. Gauges are written at
once. A process killed outright (SIGKILL: a hung engine, the OOM killer) loses what it added since its last write.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from serving.engine.batching import BatchStats

log = logging.getLogger(__name__)

PREFIX = "toxserve_"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FLUSH_S = 0.5  # how late another process's counts may reach /metrics (Prometheus scrapes every 15-60 s)


class _Pending:
    """What the buffered values of this process have added since their last write."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards `values`
        self.writing = threading.Lock()  # one flush at a time, so one that finds nothing waits for one under way
        self.values: dict = {}  # value -> amount not yet written
        self.flusher = False  # the thread that writes them every FLUSH_S runs in this process
        self.failing = False  # the last flush could not write (logged once per spell)

    def add(self, value, amount: float) -> None:
        with self.lock:
            self.values[value] = self.values.get(value, 0.0) + amount
            if self.flusher:
                return
            self.flusher = True
        try:
            threading.Thread(target=self._flush_every, name="metrics-flush", daemon=True).start()
        except RuntimeError:  # no new thread now (the interpreter is exiting): the next increment tries again
            with self.lock:
                self.flusher = False

    def pending(self, value) -> float:
        with self.lock:
            return self.values.get(value, 0.0)

    def flush(self) -> None:
        """Never raises (it runs after answers, at exit, on a device failure): what cannot be written is kept for
        the next flush."""
        with self.writing:
            with self.lock:
                taken, self.values = list(self.values.items()), {}
            kept: dict = {}
            error: Exception | None = None
            written = 0
            try:
                for value, amount in taken:
                    try:
                        value.write(amount)
                    except Exception as exc:
                        kept[value], error = amount, exc
                    written += 1
            finally:  # an interrupt part way keeps the rest too
                kept.update(taken[written:])
                with self.lock:
                    for value, amount in kept.items():
                        self.values[value] = self.values.get(value, 0.0) + amount
            newly_failing = bool(kept) and not self.failing
            self.failing = bool(kept)
        if newly_failing:  # logged outside the lock: a handler that counts something cannot wait on it
            log.error("could not write %d metric values; keeping them for the next flush", len(kept), exc_info=error)

    def _flush_every(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            self.flush()

    def forked(self) -> None:
        """In a child: the parent writes what it added, the child starts from nothing, with locks of its own."""
        self.__init__()  # type: ignore[misc]


_pending = _Pending()


def flush() -> None:
    """Write what this process's counters and histograms have added (before rendering /metrics, at exit)."""
    _pending.flush()


def _buffered_value_class() -> type:
    mapped = values.ValueClass  # prometheus_client's: written to this process's file
    if not getattr(mapped, "_multiprocess", False):  # chosen before the variable was set: nothing to buffer
        return mapped

    class BufferedValue(mapped):  # type: ignore[misc, valid-type]
        def __init__(self, typ, *args, **kwargs) -> None:
            super().__init__(typ, *args, **kwargs)
            self._buffered = typ in ("counter", "histogram")  # only ever added to

        def inc(self, amount: float) -> None:
            if self._buffered:
                _pending.add(self, amount)
            else:
                super().inc(amount)

        def write(self, amount: float) -> None:
            super().inc(amount)

        def get(self) -> float:
            with _pending.writing:  # no flush between reading the file and the amount not yet in it
                return super().get() + _pending.pending(self)

    return BufferedValue


if os.environ.get(MULTIPROC_ENV):
    values.ValueClass = _buffered_value_class()  # before any metric below makes its values
    atexit.register(flush)
    # no fork while a flush holds prometheus_client's file lock: the child could never take it
    # (looked up at each fork: a child's lock is its own, made by forked())
    os.register_at_fork(before=lambda: _pending.writing.acquire(), after_in_parent=lambda: _pending.writing.release(),
                        after_in_child=_pending.forked)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

requests = Counter(f"{PREFIX}requests_total", "HTTP requests by route and status", ["route", "status"])
request_latency = Histogram(f"{PREFIX}request_latency_seconds", "Request latency", ["route"],
                            buckets=LATENCY_BUCKETS)
stage_latency = Histogram(f"{PREFIX}stage_seconds", "Per-request time in each stage (queue, tokenize, inference)",
                          ["stage"], buckets=LATENCY_BUCKETS)
batch_size = Histogram(f"{PREFIX}batch_size", "Texts per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
batch_tokens = Histogram(f"{PREFIX}batch_padded_tokens", "Padded tokens per forward pass",
                         buckets=(16, 64, 256, 1024, 4096, 16384, 65536))
queue_depth = Gauge(f"{PREFIX}queue_texts", "Texts waiting for a batch", multiprocess_mode="livesum")
truncated_texts = Counter(f"{PREFIX}truncated_texts_total", "Texts truncated to the model's limit")
texts = Counter(f"{PREFIX}texts_total", "Texts scored")
device_failures = Counter(f"{PREFIX}device_failures_total",
                          "CUDA errors that made a worker give up its device (it is then replaced)")
engine_queue = Gauge(f"{PREFIX}engine_queue_texts", "Texts waiting in each engine's queue", ["engine"],
                     multiprocess_mode="livesum")
engine_received = Counter(f"{PREFIX}engine_texts_received_total", "Texts each engine received from the front ends",
                          ["engine"])
channel_seconds = Histogram(f"{PREFIX}channel_seconds", "Per-request time on the channel between front end and "
                            "engine (round trip less the engine's queue and compute)",
                            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1))
_stages = [stage_latency.labels(stage) for stage in ("tokenize", "queue", "inference")]
model_load_seconds = Gauge(f"{PREFIX}model_load_seconds", "Model load and warm-up time", multiprocess_mode="max")
# A multi-model endpoint's, per model (label `model`: the name it was loaded under)
model_requests = Counter(f"{PREFIX}model_requests_total", "Invocations by model and status", ["model", "status"])
model_latency = Histogram(f"{PREFIX}model_request_latency_seconds", "Invocation latency by model", ["model"],
                          buckets=LATENCY_BUCKETS)
model_batch_size = Histogram(f"{PREFIX}model_batch_size", "Texts per forward pass by model", ["model"],
                             buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
model_load_seconds_by_model = Gauge(f"{PREFIX}model_load_seconds_by_model", "Load and warm-up time by model "
                                    "(per engine)", ["model"], multiprocess_mode="livemax")
model_memory_bytes = Gauge(f"{PREFIX}model_memory_bytes", "Memory a model's load added, measured (per engine: "
                           "device memory on a GPU, resident host memory on the CPU), 0 once unloaded", ["model"],
                           multiprocess_mode="livesum")


def observe_batch(stats: BatchStats) -> None:
    batch_size.observe(stats.size)
    batch_tokens.observe(stats.padded_tokens)


def observe_request(texts_count: int, truncated: int, tokenize_s: float, queue_s: float, compute_s: float) -> None:
    texts.inc(texts_count)
    if truncated:
        truncated_texts.inc(truncated)
    for stage, seconds in zip(_stages, (tokenize_s, queue_s, compute_s), strict=True):
        stage.observe(seconds)


def render() -> tuple[bytes, str]:
    """The exposition text: all workers' values when running under gunicorn, this process's otherwise."""
    if os.environ.get(MULTIPROC_ENV):
        flush()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
