"""The text side of a subword-LSTM folder, without torch: its config, labels, word splitting and fastText
vectors. Front ends tokenise with it; the engine's RNNClassifier (serving.models.rnn) subclasses it."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from serving.classifier import Classifier, EncodedText
from serving.errors import ModelLoadError
from serving.models.fasttext import SubwordVectors

ARCHITECTURE = "SubwordLSTMClassifier"
WORD_PATTERN = r"[\w']+|[!?*@#$%]+"


@dataclass(frozen=True)
class RNNConfig:
    """Hyperparameters; defaults are the seed's training job's."""

    labels: list[str]
    embed_size: int = 300
    lstm_hidden_size: int = 200
    lstm_num_layers: int = 2
    proj_size: int = 100
    max_len: int = 100
    dropout: float = 0.1
    embeddings_file: str = "vectors.bin"
    lowercase: bool = True
    word_pattern: str = WORD_PATTERN
    architecture: str = ARCHITECTURE
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> RNNConfig:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: unreadable config ({exc})") from exc
        if raw.get("architecture") != ARCHITECTURE:
            raise ModelLoadError(f"{path}: unknown architecture {raw.get('architecture')!r}")
        if not raw.get("labels"):
            raise ModelLoadError(f"{path}: no labels (`labels` is missing or empty)")
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__ and k != "extra"}
        return cls(**known, extra={k: v for k, v in raw.items() if k not in known})

    def to_json(self) -> str:
        data = asdict(self)
        data.update(data.pop("extra"))
        return json.dumps(data, indent=2)


MAX_WORD_CHARS = 100


def prepare_shared_vectors(model_dir: Path) -> None:
    """Write the folder's fastText matrix to the host's cache, so forked workers memory-map one shared copy."""
    from serving.models.fasttext import prepare_cache

    config = RNNConfig.from_file(model_dir / "config.json")
    prepare_cache(model_dir / config.embeddings_file)


class RNNText(Classifier):
    """The text side of an LSTM folder: config, labels, word splitting and the fastText vectors."""

    family = "rnn"
    problem_type = "multi_label"

    def __init__(self, model_dir: Path, device: str = "cpu", max_length: int | None = None) -> None:
        self.config = RNNConfig.from_file(model_dir / "config.json")
        self.labels = tuple(self.config.labels)
        self.device = device
        self.max_length = min(max_length or self.config.max_len, self.config.max_len)
        self.words = re.compile(self.config.word_pattern)
        self.vectors = SubwordVectors.from_fasttext_file(model_dir / self.config.embeddings_file)
        if self.vectors.dim != self.config.embed_size:
            raise ModelLoadError(
                f"{model_dir / self.config.embeddings_file}: vectors have dimension {self.vectors.dim}, "
                f"config.json says embed_size {self.config.embed_size}"
            )

    max_word_chars = MAX_WORD_CHARS

    def split_words(self, text: str) -> list[str]:
        """Words as the config's pattern finds them, each cut to `max_word_chars` characters: fastText itself
        hashes every character n-gram of a word however long (a 1 MB "word" is millions of hashes, in Python
        here), while a real word's vector is settled by its first few dozen characters."""
        words = self.words.findall(text.lower() if self.config.lowercase else text)
        return [word[: self.max_word_chars] for word in words]

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        encoded = []
        cut_texts, cut = self.cut(texts)
        for text, was_cut in zip(cut_texts, cut, strict=True):
            words = self.split_words(text)
            rows = [self.vectors.rows_of(w) for w in words[: self.max_length]]
            encoded.append(EncodedText(rows, len(rows), len(words) > self.max_length or was_cut))
        return encoded

    def embed_numpy(self, batch: Sequence[EncodedText]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings (batch, longest, dim) and lengths, in numpy: one gather and one segment mean."""
        width = max(1, max(item.length for item in batch))
        embeddings = np.zeros((len(batch), width, self.vectors.dim), dtype=np.float32)
        slots = [(b, w, rows) for b, item in enumerate(batch) for w, rows in enumerate(item.features) if rows]
        if slots:
            flat = np.fromiter((r for _, _, rows in slots for r in rows), dtype=np.int64)
            counts = np.array([len(rows) for _, _, rows in slots])
            sums = np.add.reduceat(self.vectors.matrix[flat], np.r_[0, np.cumsum(counts)[:-1]], axis=0)
            index = np.array([(b, w) for b, w, _ in slots])
            embeddings[index[:, 0], index[:, 1]] = sums / counts[:, None]
        return embeddings, np.array([item.length for item in batch], dtype=np.int64)
