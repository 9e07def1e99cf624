"""RoBERTox equals Hugging Face's RobertaForSequenceClassification, loads its folders, and its loss modes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from serving.classifier import logits_to_scores
from serving.models.roberta import RobertaClassifier, RoBERToxForSequenceClassification

TEXTS = ["you are an idiot", "thanks for the great write up, really helpful and well sourced", "", "ok"]


def tiny_config(**overrides) -> RobertaConfig:
    """A small RoBERTa whose embeddings cover the demo tokenizer (build_demo.VOCAB_SIZE = 4,000 tokens at most)."""
    values = dict(
        vocab_size=4096, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=66, pad_token_id=1, type_vocab_size=1,
        id2label={0: "toxicity", 1: "insult", 2: "threat"}, label2id={"toxicity": 0, "insult": 1, "threat": 2},
    )
    values.update(overrides)
    return RobertaConfig(**values)


def hf_folder(tmp_path, roberta_dir, config, weights="safetensors"):
    """A folder as plain Hugging Face fine-tuning saves it, with the demo tokenizer."""
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    if weights == "bin":
        (tmp_path / "model.safetensors").unlink()
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(roberta_dir / name, tmp_path / name)
    return model


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_logits_equal_huggingface_class(tmp_path, roberta_dir, weights):
    reference = hf_folder(tmp_path, roberta_dir, tiny_config(problem_type="multi_label_classification"), weights)
    ours = RobertaClassifier(tmp_path)
    encoded = ours.encode(TEXTS)
    for item in encoded:
        with torch.inference_mode():
            expected = reference(input_ids=torch.from_numpy(item.features)[None]).logits.numpy()
        got = ours.model(input_ids=torch.from_numpy(item.features)[None]).logits.detach().numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(
            ours.predict_encoded([item]), logits_to_scores(expected, "multi_label"), atol=1e-5
        )
    assert ours.labels == ("toxicity", "insult", "threat")


def test_from_pretrained_loads_both_kinds_of_folder(tmp_path, roberta_dir):
    reference = hf_folder(tmp_path, roberta_dir, tiny_config())
    model = RoBERToxForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[0, 100, 200, 2]])
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)
    demo = RoBERToxForSequenceClassification.from_pretrained(roberta_dir)
    assert demo.config.mode == "MULTI_LABEL"


@pytest.mark.parametrize(
    ("problem_type", "num_labels", "expected"),
    [("multi_label_classification", 3, "multi_label"), ("single_label_classification", 3, "multi_class"),
     ("regression", 1, "regression"), (None, 1, "multi_label"), (None, 3, "multi_class")],
)
def test_score_functions_follow_problem_type(tmp_path, roberta_dir, problem_type, num_labels, expected):
    labels = {i: f"l{i}" for i in range(num_labels)}
    config = tiny_config(problem_type=problem_type, id2label=labels, label2id={v: k for k, v in labels.items()})
    hf_folder(tmp_path, roberta_dir, config)
    ours = RobertaClassifier(tmp_path)
    assert ours.problem_type == expected
    scores = ours.predict(TEXTS)
    assert scores.shape == (len(TEXTS), num_labels)
    if expected == "multi_class":
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)
    elif expected == "multi_label":
        assert ((scores > 0) & (scores < 1)).all()


def test_truncation_is_reported_and_respects_position_limit(tmp_path, roberta_dir):
    hf_folder(tmp_path, roberta_dir, tiny_config())
    ours = RobertaClassifier(tmp_path)
    assert ours.max_length == 64  # 66 positions - pad id 1 - 1
    long_text, short_text = " ".join(["word"] * 500), "short"
    encoded = ours.encode([long_text, short_text])
    assert (encoded[0].length, encoded[0].truncated) == (64, True)
    assert encoded[1].truncated is False
    assert ours.predict([long_text]).shape == (1, 3)


def loss_of(mode, logits, labels, class_weight=None, sample_weights=None):
    config = tiny_config(num_labels=logits.shape[1])
    config.mode, config.class_weight = mode, class_weight
    model = RoBERToxForSequenceClassification(config)
    return model.compute_loss(logits, labels, sample_weights=sample_weights)


def test_loss_modes_with_class_and_sample_weights():
    logits = torch.tensor([[0.2, -1.0, 2.0], [1.5, 0.3, -0.7]])
    fractional = torch.tensor([[0.0, 0.4, 1.0], [0.9, 0.5, 0.0]])
    weights = [1.0, 2.0, 3.0]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, fractional, weight=torch.tensor(weights), reduction="none").mean(1)
    sample = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(loss_of("MULTI_LABEL", logits, fractional, weights), expected.mean())
    torch.testing.assert_close(
        loss_of("MULTI_LABEL", logits, fractional, weights, sample), (expected * sample).sum() / 4)
    classes = torch.tensor([2, 0])
    torch.testing.assert_close(
        loss_of("MULTI_CLASS", logits, classes), torch.nn.functional.cross_entropy(logits, classes))
    target = torch.tensor([[0.5], [-1.0]])
    torch.testing.assert_close(
        loss_of("REGRESSION", logits[:, :1], target), torch.nn.functional.mse_loss(logits[:, :1], target))
    assert loss_of("MULTI_LABEL", logits, None) is None


def test_demo_config_names_the_jigsaw_labels(roberta_dir):
    config = json.loads((roberta_dir / "config.json").read_text())
    assert config["architectures"] == ["RoBERToxForSequenceClassification"]
    assert list(config["id2label"].values())[:2] == ["toxicity", "severe_toxicity"]
