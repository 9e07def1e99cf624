"""An engine process: load the model on this process's accelerator, warm it up, serve the channel until SIGTERM.

Started by the supervisor as a fresh interpreter (never forked from a process that may have touched CUDA), with
CUDA_VISIBLE_DEVICES naming its one GPU (or SERVING_SIM_DEVICE its simulated one). Exit status: 0 after a drain,
LOAD_FAILED when the model cannot be loaded (the supervisor then reports it on /ping instead of restarting).
"""

from __future__ import annotations

import itertools
import logging
import logging.config
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serving.board import Board, EngineState, error_path, socket_address
from serving.config import Settings

log = logging.getLogger(__name__)

LOAD_FAILED = 3
HEARTBEAT_S = 0.5
SETTINGS_FILE = "settings.json"


def read_settings(run_dir: Path) -> Settings:
    import json

    return Settings(**json.loads((run_dir / SETTINGS_FILE).read_text()))


def main(argv: list[str]) -> int:
    from serving.server import LOG_CONFIG

    run_dir, index, device = Path(argv[0]), int(argv[1]), argv[2]
    logging.config.dictConfig(LOG_CONFIG)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the whole group: the supervisor
    settings = read_settings(run_dir)             # decides the order of the drain
    parent = os.getppid()
    board = Board.open(run_dir)
    board.write(index, pid=os.getpid(), state=EngineState.STARTING, queued_texts=0)
    threading.Thread(target=heartbeat, args=(board, index), name="heartbeat", daemon=True).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    from serving.catalog import Catalog
    from serving.engine.models import EngineModels

    endpoint = None
    forwards = Forwards(board, index)

    def load(s: Settings, model_dir: Path, name: str):
        service = load_service(s, index, device, board.engines, model_dir, name, lambda: models.queued_texts,
                               before_warmup=forwards.watch)  # a warm-up stuck in a device call is seen too
        # answer 503s, drain, exit: a fresh engine follows (and reloads a multi-model endpoint's models)
        service.on_device_failure = lambda reason: endpoint.stop() if endpoint is not None else None
        return service

    models = EngineModels(settings, device, load, Catalog(run_dir) if settings.multi_model else None)

    def early_stop(*_) -> None:  # SIGTERM while loading: no further load starts
        stopping.set()
        models.refuse_loads()

    signal.signal(signal.SIGTERM, early_stop)
    try:
        if settings.multi_model:
            reload_models(models, index)
            threading.Thread(target=models.reconcile_forever, name="reconcile", daemon=True).start()
        else:
            models.add("", load(settings, Path(settings.model_dir or "."), ""))
    except Exception as exc:
        log.exception("engine %d could not load the model", index)
        error_path(run_dir, index).write_text(f"{type(exc).__name__}: {exc}")
        board.write(index, state=EngineState.FAILED)
        return LOAD_FAILED
    from serving import metrics
    from serving.engine.endpoint import Endpoint

    received = metrics.engine_received.labels(str(index))
    endpoint = Endpoint(models, socket_address(run_dir, index), board, index, settings.graceful_timeout_s,
                        on_received=received.inc, parent=parent)
    signal.signal(signal.SIGTERM, lambda *_: endpoint.stop())
    if stopping.is_set():
        endpoint.stop()
    board.write(index, state=EngineState.READY)
    log.info("engine %d ready (pid %d)", index, os.getpid())
    endpoint.serve()
    log.info("engine %d stopped", index)
    return 0


def heartbeat(board: Board, index: int) -> None:
    while True:
        board.beat(index)
        time.sleep(HEARTBEAT_S)


def reload_models(models, index: int) -> None:
    """A multi-model engine that starts after a crash loads what the catalog lists as loaded; one that no longer
    loads is logged and left out (its requests answer 404), the others serve."""
    from serving.catalog import READY

    assert models.catalog is not None
    for name, entry in models.catalog.entries().items():
        if entry.state != READY:
            continue
        if models._stopping:  # SIGTERM while reloading
            return
        try:
            models.load(name, Path(entry.path), entry.generation)
        except Exception:
            log.exception("engine %d could not reload model %s", index, name)


def load_service(settings: Settings, index: int, device: str, engines: int, model_dir: Path | None = None,
                 name: str = "", queued_total: Callable[[], int] | None = None,
                 before_warmup: Callable[[object], None] | None = None):
    """The model on this engine's device behind an InferenceService (batcher, device health), warmed up; `name`
    is a multi-model endpoint's name for it (its metrics' label), `queued_total` what the engine's queue gauge
    reports (default: this model's queue), `before_warmup` is called with the service before its warm-up."""
    from serving import metrics
    from serving.artifacts import load_classifier
    from serving.engine.device import set_torch_threads, worker_threads
    from serving.service import InferenceService

    s = settings
    model_dir = model_dir or Path(s.model_dir or ".")
    accelerator = None
    if s.backend == "sim":  # a simulated forward runs no torch: the engine need not import it
        from serving.models.simulated import SimulatedAccelerator

        accelerator = SimulatedAccelerator(index, s.sim_fixed_ms, s.sim_per_token_us)
        threads = worker_threads(s.torch_threads, engines, device)
    else:
        threads = set_torch_threads(s.torch_threads, engines, device)
    classifier = load_classifier(model_dir, device=device, max_length=s.max_length or None, backend=s.backend,
                                 variant=s.onnx_variant, threads=threads, dtype=s.torch_dtype,
                                 provider=s.onnx_provider, cache_dir=s.onnx_cache_dir,
                                 max_text_chars=s.max_text_chars, max_word_chars=s.max_word_chars,
                                 max_batch_size=s.max_batch_size, accelerator=accelerator,
                                 spin=not s.multi_model)  # many models' thread pools share the cores

    queued = metrics.engine_queue.labels(str(index))
    by_model = metrics.model_batch_size.labels(name) if name else None

    def on_batch(stats) -> None:
        metrics.observe_batch(stats)
        if by_model is not None:
            by_model.observe(stats.size)
        queued.set(queued_total() if queued_total is not None else service.batcher.queued_texts)

    service = InferenceService(classifier, s, model_dir, on_batch=on_batch)
    if before_warmup is not None:
        before_warmup(service)
    service.warmup()
    return service


class Forwards:
    """Stamps on the board when the oldest forward still running started (0 when none runs), so a forward stuck in a
    device call is seen (STUCK_S) even while other models' forwards start and end beside it."""

    def __init__(self, board: Board, index: int) -> None:
        self.board = board
        self.index = index
        self._running: dict[int, float] = {}  # id of the forward -> its start
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def watch(self, service) -> None:
        run_batch = service.batcher.run_batch

        def timed(batch):
            key = next(self._ids)
            with self._lock:
                self._running[key] = time.monotonic()
                self.board.forward(self.index, min(self._running.values()))
            try:
                return run_batch(batch)
            finally:
                with self._lock:
                    del self._running[key]
                    self.board.forward(self.index, min(self._running.values(), default=0.0))

        service.batcher.run_batch = timed
