"""The one interface both model families serve through: texts -> encoded texts -> per-label scores."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Scores = np.ndarray
"""float32 array of shape (num_texts, num_labels); row i answers text i."""

PROBLEM_TYPES = ("multi_label", "multi_class", "regression")


@dataclass(frozen=True, slots=True)
class EncodedText:
    """One text after tokenisation; `features` is family-specific and opaque to the batcher."""

    features: Any
    length: int
    truncated: bool


CHARS_PER_UNIT = 50  # default cap on a text's characters: this many per token (or word) of the model's limit


class Classifier(abc.ABC):
    """A loaded model: encode texts (CPU, any thread) and score batches of encoded texts."""

    family: str
    labels: tuple[str, ...]
    problem_type: str
    max_length: int
    device: str
    max_text_chars: int = 0  # 0: max_length x CHARS_PER_UNIT

    @property
    def text_char_limit(self) -> int:
        """Characters of a text kept before tokenising: far beyond what `max_length` units can span in real text,
        so only texts that would be truncated anyway are cut, and a megabyte blob costs no more than a long text."""
        return self.max_text_chars or self.max_length * CHARS_PER_UNIT

    def cut(self, texts: Sequence[str]) -> tuple[list[str], list[bool]]:
        """The texts cut to `text_char_limit`, and which were."""
        limit = self.text_char_limit
        return [text[:limit] for text in texts], [len(text) > limit for text in texts]

    @property
    def runs_on_any_thread(self) -> bool:
        """Whether predict_encoded may run on whichever request thread finds the model idle (the batcher's
        inline path), not only on the inference loop's thread."""
        return True

    @abc.abstractmethod
    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        """Tokenise texts, truncating each to `max_length` units (tokens or words)."""

    @abc.abstractmethod
    def predict_encoded(self, batch: Sequence[EncodedText]) -> Scores:
        """Score one batch; padding is internal and never changes a text's scores."""

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> Scores:
        """Score any number of texts offline, in length-sorted batches, returned in input order."""
        return self.predict_batches(self.encode(texts), batch_size)

    def predict_batches(
        self, encoded: Sequence[EncodedText], batch_size: int, progress: Callable | None = None
    ) -> Scores:
        """Score encoded texts in length-sorted batches; `progress` wraps the batch iterator (e.g. tqdm)."""
        scores = np.zeros((len(encoded), len(self.labels)), dtype=np.float32)
        batches = list(length_sorted_batches(encoded, batch_size))
        for indices in progress(batches) if progress else batches:
            scores[indices] = self.predict_encoded([encoded[i] for i in indices])
        return scores


def length_sorted_batches(encoded: Sequence[EncodedText], batch_size: int) -> Iterator[list[int]]:
    """Index lists of at most `batch_size` texts of similar length, so batches pad little."""
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def logits_to_scores(logits: np.ndarray, problem_type: str) -> Scores:
    """Sigmoid per label (multi-label), softmax (multi-class) or the raw value (regression)."""
    logits = logits.astype(np.float32, copy=False)
    if problem_type == "multi_label":
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    if problem_type == "multi_class":
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return logits
