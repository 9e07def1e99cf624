"""The full app (Flask, handler, service, batcher) on one simulated accelerator, as a WSGI module for servers
other than `serve`'s gunicorn (loadtest/bench_wsgi.py runs it under granian). SIM_MODEL_DIR names the folder."""

import os
from pathlib import Path

from serving.artifacts import load_classifier
from serving.config import Settings
from serving.frontend.app import create_app
from serving.frontend.handlers import Handler, user_code_waiting_limit
from serving.models.simulated import SimulatedAccelerator
from serving.service import InferenceService

MODEL_DIR = Path(os.environ["SIM_MODEL_DIR"])
settings = Settings.from_env(backend="sim")


def build() -> Handler:
    accelerator = SimulatedAccelerator(0, settings.sim_fixed_ms, settings.sim_per_token_us)
    service = InferenceService(load_classifier(MODEL_DIR, backend="sim", accelerator=accelerator), settings, MODEL_DIR)
    service.warmup()
    return Handler(service, None, max_waiting=user_code_waiting_limit(settings.max_queue_texts, settings.threads))


app = create_app(settings, build_handler=build, load_in_background=False)
