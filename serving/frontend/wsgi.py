"""The front-end process's WSGI app: the same Flask app as the workers layout, its service fed by the engines.

granian imports `create` in each front-end process (serving.supervisor starts them); the server's settings and its
run folder (channel sockets, status board) come from the folder named by serving.board.RUN_DIR_ENV.
"""

from __future__ import annotations

import logging.config
import os
from collections.abc import Sequence
from pathlib import Path

from flask import Flask

from serving.board import RUN_DIR_ENV
from serving.classifier import Classifier, EncodedText, Scores
from serving.config import Settings
from serving.models.rnn_text import RNNText
from serving.models.roberta_text import RobertaText


class _NoModel:
    def predict_encoded(self, batch: Sequence[EncodedText]) -> Scores:
        raise RuntimeError("a front end has no model: the engines score")


class RobertaTextSide(_NoModel, RobertaText):
    """The RoBERTa folder's tokenizer, labels and limits, without its weights."""


class RNNTextSide(_NoModel, RNNText):
    """The LSTM folder's word splitting and memory-mapped fastText vectors, without the LSTM."""


def load_text_side(model_dir: Path, settings: Settings) -> Classifier:
    from serving.artifacts import detect_family, with_input_caps

    side = RNNTextSide if detect_family(model_dir) == "rnn" else RobertaTextSide
    text = side(model_dir, "engines", settings.max_length or None)
    return with_input_caps(text, settings.max_text_chars, settings.max_word_chars)


def create() -> Flask:
    from serving.engine.main import read_settings
    from serving.frontend.app import create_app
    from serving.frontend.engines import EngineClient
    from serving.frontend.handlers import Handler
    from serving.server import LOG_CONFIG
    from serving.service import InferenceService

    run_dir = Path(os.environ[RUN_DIR_ENV])
    settings = read_settings(run_dir)
    logging.config.dictConfig(LOG_CONFIG)
    model_dir = Path(settings.model_dir or ".")

    client = EngineClient(run_dir, settings.max_queue_texts, max_in_flight=max(1, settings.threads // 2))
    if settings.multi_model:
        from serving.frontend.models import ModelSet

        return create_app(settings, models=ModelSet(run_dir, settings, client))

    def build() -> Handler:
        return Handler(InferenceService(load_text_side(model_dir, settings), settings, model_dir, queue=client))

    app = create_app(settings, build_handler=build, load_in_background=False)
    return app
