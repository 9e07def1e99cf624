"""The seed's subword-embedding + stacked-LSTM classifier and the Classifier that serves it.

Folder layout (all in one SageMaker model folder):
  config.json        {"architecture": "SubwordLSTMClassifier", "labels": [...], hyperparameters, ...}
  model.safetensors  LSTM and head weights (the embedding table comes from the fastText file)
  <embeddings_file>  the fastText/BlazingText `.bin` (default `vectors.bin`)
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serving.classifier import Classifier, EncodedText, Scores, logits_to_scores
from serving.errors import ModelLoadError
from serving.models.fasttext import SubwordVectors
from serving.weights import assign_weights, load_state_dict

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


class SubwordLSTMClassifier(nn.Module):
    """Mean of subword rows per word -> stacked LSTM -> state at the last real word -> projection -> labels."""

    table: torch.Tensor

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        # The frozen fastText table: not in model.safetensors; the loader puts the shared, memory-mapped matrix here.
        self.register_buffer("table", torch.zeros(0, config.embed_size), persistent=False)
        self.lstm = nn.LSTM(
            config.embed_size, config.lstm_hidden_size, num_layers=config.lstm_num_layers,
            batch_first=True, dropout=config.dropout if config.lstm_num_layers > 1 else 0.0,
        )
        self.head = nn.Sequential(
            nn.Linear(config.lstm_hidden_size, config.proj_size),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.proj_size, len(config.labels)),
        )

    def embed(self, flat_rows: torch.Tensor, offsets: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Mean of each word slot's rows in one `embedding_bag` call; empty slots (padding) are zeros."""
        vectors = nn.functional.embedding_bag(flat_rows, self.table, offsets, mode="mean")
        return vectors.view(shape[0], shape[1], -1)

    def forward(self, embeddings: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(embeddings)
        # A unidirectional LSTM's output at the last real word never sees the padding after it.
        last = (lengths.clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
        return self.head(outputs.gather(1, last).squeeze(1))


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


class RNNClassifier(RNNText):
    def __init__(self, model_dir: Path, device: str = "cpu", max_length: int | None = None) -> None:
        super().__init__(model_dir, device, max_length)
        self.model = SubwordLSTMClassifier(self.config)
        assign_weights(self.model, load_state_dict(model_dir, ("model.safetensors",)), model_dir)
        with warnings.catch_warnings():  # read-only on purpose: the page-cache copy every worker shares
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.model.table = torch.from_numpy(self.vectors.matrix)
        self.model.to(device).eval()

    def batch_tensors(self, batch: Sequence[EncodedText]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (batch, longest text, dim) and lengths; padding slots are empty bags."""
        width = max(1, max(item.length for item in batch))
        flat: list[int] = []
        offsets = np.zeros(len(batch) * width, dtype=np.int64)
        for b, item in enumerate(batch):
            for w in range(width):
                offsets[b * width + w] = len(flat)
                if w < item.length:
                    flat.extend(item.features[w])
        lengths = torch.tensor([item.length for item in batch], dtype=torch.int64, device=self.device)
        rows = torch.tensor(flat, dtype=torch.int64, device=self.device)
        embeddings = self.model.embed(rows, torch.from_numpy(offsets).to(self.device), (len(batch), width))
        return embeddings, lengths

    @property
    def runs_on_any_thread(self) -> bool:
        from serving.engine.device import torch_runs_on_any_thread

        return torch_runs_on_any_thread(self.device)

    def predict_encoded(self, batch: Sequence[EncodedText]) -> Scores:
        with torch.inference_mode():
            logits = self.model(*self.batch_tensors(batch))
        return logits_to_scores(logits.float().cpu().numpy(), self.problem_type)
