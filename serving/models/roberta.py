"""RoBERTox: the seed's RoBERTa classifier, its loss modes, and a Classifier that serves it."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import RobertaConfig, RobertaModel, RobertaPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.roberta.modeling_roberta import RobertaClassificationHead

from serving.classifier import Classifier, EncodedText, Scores, logits_to_scores
from serving.errors import ModelLoadError
from serving.weights import assign_weights, load_state_dict

ARCHITECTURES = ("RoBERToxForSequenceClassification", "RobertaForSequenceClassification")
# encode_batch hands texts to the tokenizers library's thread pool: for one text between requests it cost
# 0.23 ms against 0.14 ms for encode (profiled in-process), so small requests encode in place.
SEQUENTIAL_ENCODE_MAX = 8


class LossMode(enum.StrEnum):
    MULTI_LABEL = "MULTI_LABEL"
    MULTI_CLASS = "MULTI_CLASS"
    REGRESSION = "REGRESSION"


class CustomLossMixIn:
    """Loss chosen by `config.mode`, with optional per-class and per-sample weights (as in the seed)."""

    config: Any

    def compute_loss(
        self, logits: torch.Tensor, labels: torch.Tensor | None, sample_weights: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        if labels is None:
            return None
        mode = LossMode(getattr(self.config, "mode", LossMode.MULTI_LABEL.value))
        class_weight = getattr(self.config, "class_weight", None)
        weight = None if class_weight is None else torch.tensor(class_weight, device=logits.device)
        if mode is LossMode.MULTI_LABEL:
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits, labels.to(logits.dtype), weight=weight, reduction="none"
            ).mean(dim=1)
        elif mode is LossMode.MULTI_CLASS:
            loss = nn.functional.cross_entropy(logits, labels.long(), weight=weight, reduction="none")
        else:
            loss = nn.functional.mse_loss(logits, labels.to(logits.dtype).view_as(logits), reduction="none")
            loss = loss.mean(dim=1)
        if sample_weights is not None:
            return (loss * sample_weights.to(loss.dtype)).sum() / sample_weights.sum()
        return loss.mean()


class RoBERToxForSequenceClassification(CustomLossMixIn, RobertaPreTrainedModel):
    """RoBERTa encoder (no pooler) + RobertaClassificationHead; same weight names as HF's class."""

    _keys_to_ignore_on_load_missing = [r"position_ids"]

    def __init__(self, config: RobertaConfig, *inputs, **kwargs) -> None:
        super().__init__(config, *inputs, **kwargs)
        self.num_labels = config.num_labels
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        sample_weights: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        outputs = self.roberta(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(outputs[0])
        loss = self.compute_loss(logits, labels, sample_weights=sample_weights)
        if return_dict is False:
            output = (logits,)
            return ((loss,) + output) if loss is not None else output
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


def problem_type_of(config: RobertaConfig) -> str:
    """Our mode if the training job set one, else Hugging Face's text-classification pipeline rule."""
    mode = getattr(config, "mode", None)
    if mode is not None:
        return {"MULTI_LABEL": "multi_label", "MULTI_CLASS": "multi_class", "REGRESSION": "regression"}[mode]
    if config.problem_type == "regression":
        return "regression"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "multi_label"
    return "multi_class"


class RobertaText(Classifier):
    """The text side of a RoBERTa folder: config, labels, BPE tokenizer and padding; any runtime scores it."""

    family = "roberta"

    def __init__(self, model_dir: Path, device: str = "cpu", max_length: int | None = None) -> None:
        self.config = _read_config(model_dir)
        id2label: dict[Any, str] = dict(self.config.id2label or {})
        self.labels = tuple(id2label[i] for i in range(len(id2label)))
        self.problem_type = problem_type_of(self.config)
        self.device = device
        self.pad_id = int(self.config.pad_token_id if self.config.pad_token_id is not None else 1)
        position_limit = self.config.max_position_embeddings - self.pad_id - 1
        self.max_length = min(max_length or position_limit, position_limit)
        self.tokenizer = _read_tokenizer(model_dir, self.max_length)

    def encode(self, texts: Sequence[str]) -> list[EncodedText]:
        texts, cut = self.cut(texts)  # the tokenizer encodes a whole text before it truncates
        if len(texts) <= SEQUENTIAL_ENCODE_MAX:
            encodings = [self.tokenizer.encode(text, add_special_tokens=True) for text in texts]
        else:
            encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
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


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class RobertaClassifier(RobertaText):
    """Serves a RoBERTox or plain RobertaForSequenceClassification folder with torch (no remote code, ever).

    On CUDA: PyTorch's SDPA attention, optional fp16/bf16 weights, sequence lengths padded to a multiple
    of 8 (tensor-core friendly shapes, fewer distinct kernels).
    """

    def __init__(self, model_dir: Path, device: str = "cpu", max_length: int | None = None,
                 dtype: str = "fp32") -> None:
        super().__init__(model_dir, device, max_length)
        if dtype not in DTYPES:
            raise ModelLoadError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        if dtype == "bf16" and device.startswith("cuda"):
            _check_bf16(device)
        self.dtype = dtype
        self.config._attn_implementation = "sdpa"
        self.pad_multiple = 8 if device.startswith("cuda") else 1
        self.model = RoBERToxForSequenceClassification(self.config)
        state = load_state_dict(model_dir)
        state = {k: v for k, v in state.items() if not k.endswith("position_ids") and ".pooler." not in k}
        assign_weights(self.model, state, model_dir)
        self.model.to(device=device, dtype=DTYPES[dtype]).eval()  # type: ignore[call-arg]  # transformers typing

    @property
    def runs_on_any_thread(self) -> bool:
        from serving.engine.device import torch_runs_on_any_thread

        return torch_runs_on_any_thread(self.device)

    def predict_encoded(self, batch: Sequence[EncodedText]) -> Scores:
        input_ids, attention_mask = self.pad(batch)
        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.from_numpy(input_ids).to(self.device),
                attention_mask=torch.from_numpy(attention_mask).to(self.device),
            ).logits
        return logits_to_scores(logits.float().cpu().numpy(), self.problem_type)


def _check_bf16(device: str) -> None:
    """bf16 is emulated, slowly and with other numbers, below compute capability 8.0 (T4, V100): refuse it."""
    from serving.gpus import BF16_MIN_CAPABILITY

    capability = torch.cuda.get_device_capability(device)
    if capability < BF16_MIN_CAPABILITY:
        raise ModelLoadError(f"dtype bf16 needs compute capability 8.0 or newer; {torch.cuda.get_device_name(device)} "
                             f"has {capability[0]}.{capability[1]} (use fp16 or auto)")


def _read_config(model_dir: Path) -> RobertaConfig:
    path = model_dir / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable config ({exc})") from exc
    architectures = raw.get("architectures") or []
    if not set(architectures) & set(ARCHITECTURES):
        raise ModelLoadError(f"{path}: unknown architecture {architectures!r}; expected one of {ARCHITECTURES}")
    if not raw.get("id2label"):
        raise ModelLoadError(f"{path}: no labels (id2label is missing or empty)")
    return RobertaConfig.from_dict(raw)


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
