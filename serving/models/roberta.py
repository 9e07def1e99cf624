"""RoBERTox: the seed's RoBERTa classifier, its loss modes, and a Classifier that serves it."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import RobertaConfig, RobertaModel, RobertaPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.roberta.modeling_roberta import RobertaClassificationHead

from serving.classifier import EncodedText, Scores, logits_to_scores
from serving.errors import ModelLoadError
from serving.models.roberta_text import RobertaText
from serving.weights import assign_weights, load_state_dict


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
        self.config = RobertaConfig.from_dict(self.raw_config)
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
