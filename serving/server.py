"""`serve`: gunicorn (gthread) running the Flask app; one worker per GPU, the model loaded after fork."""

from __future__ import annotations

import logging
import logging.config
import os
import tempfile
from pathlib import Path

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from serving.config import Settings

log = logging.getLogger(__name__)

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


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class Server(BaseApplication):
    """gunicorn configured from Settings; each worker builds its own app, service and model."""

    def __init__(self, settings: Settings, model_dir: Path, gpus: int) -> None:
        self.settings = settings
        self.model_dir = model_dir
        self.gpus = gpus
        # CPU: one single-threaded worker per core measured faster than one worker with a thread per core
        # (the GIL caps one process near 550 req/s; OpenMP teams off the main thread lose 25-50%).
        self.workers = settings.workers or gpus or (os.cpu_count() or 1)
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
        """Give the new worker a GPU no live worker holds (in the master, before fork)."""
        if self.gpus:
            taken = {getattr(w, "gpu_index", None) for w in server.WORKERS.values()}
            worker.gpu_index = next((i for i in range(self.gpus) if i not in taken), 0)

    def post_fork(self, server, worker) -> None:
        if self.gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(worker.gpu_index)

    def worker_exit(self, server, worker) -> None:
        """After gunicorn's graceful drain: let the batcher finish what it holds."""
        app = getattr(worker, "wsgi", None)
        state = app.extensions.get("model_state") if app is not None else None
        if state is not None and state.service is not None:
            state.service.stop(self.settings.graceful_timeout_s)

    def load(self):
        from serving.app import create_app
        from serving.artifacts import load_classifier
        from serving.device import pick_device, set_torch_threads
        from serving.handlers import Handler, load_user_module
        from serving.metrics import observe_batch
        from serving.service import InferenceService

        s = self.settings
        device = pick_device(s.device)
        threads = set_torch_threads(s.torch_threads, self.workers) if device == "cpu" else 1

        def build() -> Handler:
            user_module = load_user_module(self.model_dir)
            model_fn = getattr(user_module, "model_fn", None)
            if model_fn is not None:
                return Handler(model_fn(str(self.model_dir)), user_module)
            classifier = load_classifier(self.model_dir, device=device, max_length=s.max_length or None,
                                         backend=s.backend, variant=s.onnx_variant, threads=threads,
                                         dtype=s.torch_dtype)
            return Handler(InferenceService(classifier, s, self.model_dir, on_batch=observe_batch), user_module)

        return create_app(s, build_handler=build, load_in_background=False)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)


def run(settings: Settings) -> None:
    """Check the model folder, then hand over to gunicorn (which exits 0 after a SIGTERM drain)."""
    from serving.artifacts import detect_family, resolve_model_dir

    logging.config.dictConfig(LOG_CONFIG)
    model_dir = resolve_model_dir(settings.model_dir)
    family = detect_family(model_dir)
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="toxserve-metrics-"))
    gpus = gpu_count() if settings.device in ("auto", "cuda") else 0
    log.info("serving %s model from %s with settings %s", family, model_dir, settings.describe())
    Server(settings, model_dir, gpus).run()

