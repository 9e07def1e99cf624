"""The text side of a RoBERTa folder, without torch or transformers: front ends tokenise with it, and an
engine's model subclasses it. A front end that imported torch paid seconds of start and hundreds of MB per
process for nothing it uses."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.classifier import Classifier, EncodedText
from serving.errors import ModelLoadError

ARCHITECTURES = ("RoBERToxForSequenceClassification", "RobertaForSequenceClassification")
# encode_batch_fast skips the character offsets (nothing here reads them), a good part of a short text's tokenising.
# With the library's parallelism on it hands even one text to the library's thread pool, which for one text between
# requests cost more than it saved (profiled in-process), so small requests then encode in place.
SEQUENTIAL_ENCODE_MAX = 8
PARALLELISM_ENV = "TOKENIZERS_PARALLELISM"  # the tokenizers library's switch, and the values it reads as off
PARALLELISM_OFF = ("", "false", "f", "off", "no", "n", "0")
# transformers' RobertaConfig defaults, for a config.json that leaves them out
DEFAULT_PAD_TOKEN_ID = 1
DEFAULT_MAX_POSITIONS = 512


def problem_type_of(config: dict[str, Any]) -> str:
    """Our mode if the training job set one, else Hugging Face's text-classification pipeline rule."""
    mode = config.get("mode")
    if mode is not None:
        return {"MULTI_LABEL": "multi_label", "MULTI_CLASS": "multi_class", "REGRESSION": "regression"}[mode]
    if config.get("problem_type") == "regression":
        return "regression"
    if config.get("problem_type") == "multi_label_classification" or len(config["id2label"]) == 1:
        return "multi_label"
    return "multi_class"


class RobertaText(Classifier):
    """The text side of a RoBERTa folder: config, labels, BPE tokenizer and padding; any runtime scores it."""

    family = "roberta"

    def __init__(self, model_dir: Path, device: str = "cpu", max_length: int | None = None) -> None:
        self.raw_config = read_config(model_dir)
        id2label = self.raw_config["id2label"]
        self.labels = tuple(id2label[i] for i in range(len(id2label)))
        self.problem_type = problem_type_of(self.raw_config)
        self.device = device
        self.pad_id = self.raw_config["pad_token_id"]
        position_limit = self.raw_config["max_position_embeddings"] - self.pad_id - 1
        self.max_length = min(max_length or position_limit, position_limit)
        self.tokenizer = _read_tokenizer(model_dir, self.max_length)

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        texts, cut = self.cut(texts)  # the tokenizer encodes a whole text before it truncates
        parallel = os.environ.get(PARALLELISM_ENV, "true").strip().lower() not in PARALLELISM_OFF
        if len(texts) <= SEQUENTIAL_ENCODE_MAX and parallel:
            encodings = [self.tokenizer.encode(text, add_special_tokens=True) for text in texts]
        else:
            encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=True)
        return [
            EncodedText(np.asarray(e.ids, dtype=np.int64), len(e.ids), bool(e.overflowing) or was_cut)
            for e, was_cut in zip(encodings, cut, strict=True)
        ]

    pad_multiple = 1

    def pad(self, batch: Sequence[EncodedText]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask, (batch, longest rounded up to `pad_multiple`) int64."""
        width = -(-max(item.length for item in batch) // self.pad_multiple) * self.pad_multiple
        input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, item in enumerate(batch):
            input_ids[row, : item.length] = item.features
            attention_mask[row, : item.length] = 1
        return input_ids, attention_mask


def read_config(model_dir: Path) -> dict[str, Any]:
    """config.json as a dict, checked: a known architecture and labels."""
    path = model_dir / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable config ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: config.json must hold a JSON object")
    architectures = raw.get("architectures") or []
    if not set(architectures) & set(ARCHITECTURES):
        raise ModelLoadError(f"{path}: unknown architecture {architectures!r}; expected one of {ARCHITECTURES}")
    if not raw.get("id2label"):
        raise ModelLoadError(f"{path}: no labels (id2label is missing or empty)")
    try:
        id2label = {int(k): str(v) for k, v in raw["id2label"].items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: id2label must map 0..n-1 to label names ({exc!r})") from exc
    if sorted(id2label) != list(range(len(id2label))):
        raise ModelLoadError(f"{path}: id2label must map 0..n-1 to label names, got ids {sorted(id2label)}")
    if raw.get("num_labels") is not None and raw["num_labels"] != len(id2label):
        raise ModelLoadError(f"{path}: num_labels is {raw['num_labels']!r} but id2label names {len(id2label)} labels")
    # transformers' defaults for what a config.json leaves out; a null pad id is read as RoBERTa's 1, which the
    # engine's RobertaConfig is then built with too (transformers itself would keep None)
    pad_id = raw["pad_token_id"] if raw.get("pad_token_id") is not None else DEFAULT_PAD_TOKEN_ID
    positions = raw.get("max_position_embeddings", DEFAULT_MAX_POSITIONS)
    for name, value in (("pad_token_id", pad_id), ("max_position_embeddings", positions)):
        if type(value) is not int or value < 0:
            raise ModelLoadError(f"{path}: {name} must be a whole number >= 0, got {value!r}")
    if positions - pad_id - 1 < 1:
        raise ModelLoadError(f"{path}: max_position_embeddings {positions} leaves no room for a token after the "
                             f"padding id {pad_id}")
    return {**raw, "id2label": id2label, "pad_token_id": pad_id, "max_position_embeddings": positions}


def _read_tokenizer(model_dir: Path, max_length: int):
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for missing and bad files
        raise ModelLoadError(f"{path}: missing or unreadable tokenizer ({exc})") from exc
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer
