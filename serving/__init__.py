"""Serving RoBERTox and subword-LSTM toxicity classifiers behind the SageMaker container contract."""

from __future__ import annotations

from serving.artifacts import load_classifier, resolve_model_dir
from serving.classifier import Classifier, EncodedText, Scores
from serving.errors import ModelLoadError, ServingError

__all__ = [
    "Classifier",
    "EncodedText",
    "ModelLoadError",
    "Scores",
    "ServingError",
    "load_classifier",
    "resolve_model_dir",
]
