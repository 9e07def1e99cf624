"""`serve`: gunicorn (gthread) running the Flask app; workers pinned to GPUs, the model loaded after fork.

The master never initialises CUDA (serving.gpus asks a spawned child), so forked workers can.
"""

from __future__ import annotations

import dataclasses
import logging
import logging.config
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from serving.config import Settings
from serving.engine.device import GPU_WORKER_THREADS
from serving.gpus import VISIBLE_ENV, Gpu, check_dtype, discover, next_slot

log = logging.getLogger(__name__)

# Not imported from serving.metrics: prometheus_client picks its multiprocess mode when first imported, which
# must happen in the workers, after this variable is set.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"},
        "json": {"format": "%(message)s"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
        "access": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
    },
    "loggers": {
        "serving.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        "gunicorn.error": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
}


class AppAccessLogOnly(Logger):
    """The app writes the JSON access log (with request ids); gunicorn's own would still format its atoms for
    every request because a logging config is set (0.04 ms per request in a profile), so it is switched off."""

    def access(self, resp, req, environ, request_time) -> None:
        return None


class Server(BaseApplication):
    """gunicorn configured from Settings; each worker builds its own app, service and model."""

    def __init__(self, settings: Settings, model_dir: Path, gpus: list[Gpu]) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.gpus = gpus
        # Accelerators the workers are spread over and pinned to: the GPUs, or backend sim's simulated ones.
        self.accelerators = settings.sim_devices if settings.backend == "sim" else len(gpus)
        # CPU: one single-threaded worker per core measured faster than one worker with a thread per core
        # (the GIL caps one process near 550 req/s; OpenMP teams off the main thread lose 25-50%).
        self.workers = settings.workers or self.accelerators * settings.workers_per_gpu or (os.cpu_count() or 1)
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        config = {
            "bind": f"{s.host}:{s.port}",
            "workers": self.workers,
            "worker_class": "gthread",
            "threads": s.threads,
            # gthread workers heartbeat from their main thread, so long inferences never trip this; it must
            # outlast a worker's model load and warm-up, which happen before the worker serves.
            "timeout": max(600, s.timeout_s * 2),
            "graceful_timeout": s.graceful_timeout_s,
            "keepalive": 75,
            "accesslog": None,
            "loglevel": s.log_level,
            "logconfig_dict": LOG_CONFIG,
            "logger_class": AppAccessLogOnly,
            "pre_fork": self.pre_fork,
            "post_fork": self.post_fork,
            "worker_exit": self.worker_exit,
            "child_exit": child_exit,
        }
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn >= 25 opens a management socket at one fixed path per user; servers side by side clash.
            config["control_socket_disable"] = True
        for key, value in config.items():
            self.cfg.set(key, value)

    def pre_fork(self, server, worker) -> None:
        """Give the new worker the accelerator the fewest live workers hold (in the master, before fork)."""
        if self.accelerators:
            in_use = [w.gpu_slot for w in server.WORKERS.values() if hasattr(w, "gpu_slot")]
            worker.gpu_slot = next_slot(in_use, self.accelerators)

    def post_fork(self, server, worker) -> None:
        """Pin the worker to its GPU by the host's own name for it (an index or a UUID), or to its simulated one."""
        if self.gpus:
            gpu = self.gpus[worker.gpu_slot]
            os.environ[VISIBLE_ENV] = gpu.visible_id
            log.info("worker %d pinned: %s=%s (%s)", os.getpid(), VISIBLE_ENV, os.environ[VISIBLE_ENV], gpu.name)
        elif self.accelerators:
            from serving.models.simulated import DEVICE_ENV

            os.environ[DEVICE_ENV] = str(worker.gpu_slot)
            log.info("worker %d pinned to simulated accelerator %d", os.getpid(), worker.gpu_slot)

    def worker_exit(self, server, worker) -> None:
        """After gunicorn's graceful drain: let the batcher finish what it holds."""
        app = getattr(worker, "wsgi", None)
        state = app.extensions.get("model_state") if app is not None else None
        if state is not None and state.service is not None:
            state.service.stop(self.settings.graceful_timeout_s)

    def load(self):
        from serving.artifacts import load_classifier
        from serving.engine.device import set_torch_threads
        from serving.frontend.app import create_app
        from serving.frontend.handlers import Handler, load_user_module, user_code_waiting_limit
        from serving.metrics import observe_batch
        from serving.service import InferenceService

        s = self.settings
        device = "cuda" if self.gpus else "cpu"  # a GPU worker sees only its own GPU, as device 0
        threads = set_torch_threads(s.torch_threads, self.workers, device)
        accelerator = None
        if s.backend == "sim":
            from serving.models.simulated import DEVICE_ENV, SimulatedAccelerator

            accelerator = SimulatedAccelerator(int(os.environ.get(DEVICE_ENV, "0")), s.sim_fixed_ms,
                                               s.sim_per_token_us)

        waiting = user_code_waiting_limit(s.max_queue_texts, s.threads)

        def build() -> Handler:
            user_module = load_user_module(self.model_dir)
            model_fn = getattr(user_module, "model_fn", None)
            if model_fn is not None:
                return Handler(model_fn(str(self.model_dir)), user_module, max_waiting=waiting)
            classifier = load_classifier(self.model_dir, device=device, max_length=s.max_length or None,
                                         backend=s.backend, variant=s.onnx_variant, threads=threads,
                                         dtype=s.torch_dtype, provider=s.onnx_provider, cache_dir=s.onnx_cache_dir,
                                         max_text_chars=s.max_text_chars, max_word_chars=s.max_word_chars,
                                         max_batch_size=s.max_batch_size, accelerator=accelerator)
            service = InferenceService(classifier, s, self.model_dir, on_batch=observe_batch,
                                       on_device_failure=replace_this_worker)
            return Handler(service, user_module, max_waiting=waiting)

        # the app answers /execution-parameters with the real worker count, not the setting's 0 (= automatic)
        return create_app(dataclasses.replace(s, workers=self.workers), build_handler=build, load_in_background=False)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(worker.pid)


def replace_this_worker(reason: str) -> None:
    """A worker whose CUDA context is poisoned exits (gracefully: its in-flight requests get their 503s) and
    gunicorn starts a fresh one with a new context; a SIGTERM to itself is gunicorn's graceful worker exit."""
    log.error("worker %d exits so that gunicorn replaces it: %s", os.getpid(), reason)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()


def fresh_metrics_dir() -> None:
    """Prometheus multiprocess files from an earlier run (a restarted container) would be summed into ours."""
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder:
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="toxserve-metrics-")
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def share_vectors(model_dir: Path) -> None:
    """The LSTM's fastText matrix, cached once here (before the fork) for every worker to memory-map."""
    from serving.errors import ModelLoadError
    from serving.models.rnn_text import prepare_shared_vectors

    try:
        prepare_shared_vectors(model_dir)
    except ModelLoadError as exc:  # the workers meet the same error and say it on /ping, as for any bad folder
        log.error("could not cache the fastText vectors: %s", exc)


def choose_layout(settings: Settings, model_dir: Path, gpus: list[Gpu]) -> tuple[str, str]:
    """engines or workers, and why (see Settings.layout)."""
    from serving.frontend.handlers import has_user_code

    user_code = has_user_code(model_dir)
    if user_code and settings.layout == "engines":
        raise ValueError("the model folder has user code (code/inference.py), which runs in layout workers only")
    if settings.layout != "auto":
        return settings.layout, "asked for"
    if user_code:
        return "workers", "the model folder has user code, which runs beside its own model"
    if gpus or settings.backend == "sim":
        return "engines", "accelerators: HTTP front ends on every core feed one engine per accelerator"
    return "workers", "CPU only: one worker per core, each with its own model, measured fastest (BENCHMARKS.md)"


def find_gpus(settings: Settings) -> list[Gpu]:
    if settings.backend == "sim":  # no GPU is asked anything: the workers' devices are simulated
        from serving.models.simulated import LOCKS_ENV, make_device_locks

        os.environ[LOCKS_ENV] = str(make_device_locks(settings.sim_devices))
        return []
    try:
        gpus = discover(settings.device)
    except RuntimeError as exc:
        raise ValueError(f"could not list the GPUs: {exc}") from exc
    check_dtype(settings.torch_dtype, gpus)
    return gpus


def run_multi_model(settings: Settings) -> None:
    """A multi-model endpoint: the engines layout with no model until /models loads them."""
    from serving.supervisor import Supervisor

    root = Path(settings.models_root)
    if not root.is_dir():
        raise ValueError(f"models_root {root} is not a folder (SERVING_MODELS_ROOT; SageMaker's is /opt/ml/models)")
    gpus = find_gpus(settings)
    log.info("multi-model endpoint over models in %s with settings %s", root, settings.describe())
    code = Supervisor(settings, None, gpus).run()
    if code:
        sys.exit(code)


def run(settings: Settings) -> None:
    """Check the model folder and the GPUs, then hand over to gunicorn (which exits 0 after a SIGTERM drain)."""
    from serving.artifacts import detect_family, resolve_model_dir

    logging.config.dictConfig(LOG_CONFIG)
    fresh_metrics_dir()
    if settings.multi_model:
        run_multi_model(settings)
        return
    model_dir = resolve_model_dir(settings.model_dir)
    family = detect_family(model_dir)
    if family == "rnn":
        share_vectors(model_dir)
    gpus = find_gpus(settings)
    layout, why = choose_layout(settings, model_dir, gpus)
    log.info("serving %s model from %s with settings %s", family, model_dir, settings.describe())
    log.info("layout %s: %s", layout, why)
    if layout == "engines":
        from serving.supervisor import Supervisor

        code = Supervisor(settings, model_dir, gpus).run()
        if code:
            sys.exit(code)
        return
    # Every worker imports torch (set_torch_threads, sim included); importing it once here lets them share it
    # after the fork. Importing does not initialise CUDA, which is what a forking master must not do (serving.gpus).
    import torch  # noqa: F401

    server = Server(settings, model_dir, gpus)
    if settings.backend == "sim":
        log.info("layout: %d worker(s) over %d simulated accelerator(s) (%.3g ms + %.3g us per padded token)",
                 server.workers, settings.sim_devices, settings.sim_fixed_ms, settings.sim_per_token_us)
    elif gpus:
        log.info("layout: %d worker(s) over %d GPU(s), %d torch thread(s) each: %s", server.workers, len(gpus),
                 settings.torch_threads or GPU_WORKER_THREADS, "; ".join(g.describe() for g in gpus))
    else:
        log.info("layout: %d CPU worker(s)", server.workers)
    server.run()

