"""The seed's subword-embedding + stacked-LSTM classifier and the Classifier that serves it.

Folder layout (all in one SageMaker model folder):
  config.json        {"architecture": "SubwordLSTMClassifier", "labels": [...], hyperparameters, ...}
  model.safetensors  LSTM and head weights (the embedding table comes from the fastText file)
  <embeddings_file>  the fastText/BlazingText `.bin` (default `vectors.bin`)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from serving.classifier import EncodedText, Scores, logits_to_scores
from serving.models.rnn_text import RNNConfig, RNNText
from serving.weights import assign_weights, load_state_dict


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
