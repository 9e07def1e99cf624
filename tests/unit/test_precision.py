"""fp16 is served only when its scores agree with fp32 on the same device; otherwise fp32, with the reason."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from serving.engine.precision import CHECK_TEXTS, HALF_MIN_DECISIONS_AGREE, agreement, choose_half_or_full
from serving.errors import ModelLoadError


class Scorer:
    """A loaded model whose scores are fp32's plus a fixed error."""

    def __init__(self, precision: str, error: np.ndarray) -> None:
        self.precision, self.error = precision, error

    def predict(self, texts):
        rng = np.random.default_rng(len(texts))
        return np.clip(rng.random((len(texts), 7)) + self.error[: len(texts)], 0, 1).astype(np.float32)


def loader(half_error: np.ndarray, loaded: list[str]):
    def load(precision: str) -> Scorer:
        loaded.append(precision)
        if half_error is None and precision == "fp16":
            raise ModelLoadError("fp16 graph missing")
        return Scorer(precision, half_error if precision == "fp16" else np.zeros((len(CHECK_TEXTS), 7)))
    return load


def test_fp16_that_agrees_is_served(caplog):
    loaded: list[str] = []
    with caplog.at_level(logging.INFO):
        chosen = choose_half_or_full(loader(np.full((len(CHECK_TEXTS), 7), 1e-3), loaded), "fp16", "fp32", "torch")
    assert chosen.precision == "fp16" and loaded == ["fp32", "fp16"]
    assert "serving fp16" in caplog.text and "decisions agree" in caplog.text


@pytest.mark.parametrize("how", ["scores drift", "one text breaks", "fp16 does not load"])
def test_fp16_that_does_not_agree_falls_back_to_fp32_saying_why(caplog, how):
    error = np.zeros((len(CHECK_TEXTS), 7))
    if how == "scores drift":
        error[:, 0] = 0.05
    elif how == "one text breaks":
        error[0, :] = 1.0  # every label of one text forced to 1: several decisions flip, diffs stay bounded
    with caplog.at_level(logging.INFO):
        chosen = choose_half_or_full(loader(None if "load" in how else error, []), "fp16", "fp32", "torch")
    assert chosen.precision == "fp32"
    assert "serving fp32" in caplog.text and ("missed the tolerance" in caplog.text or "fp16 failed" in caplog.text)


class Failing(Scorer):
    def __init__(self, error: Exception) -> None:
        self.precision, self.failure = "fp16", error

    def predict(self, texts):
        raise self.failure


def test_fp16_whose_forward_fails_falls_back_to_fp32_unless_the_device_is_lost(caplog):
    def load_with(failure):
        return lambda precision: Failing(failure) if precision == "fp16" else Scorer("fp32", np.zeros((40, 7)))

    with caplog.at_level(logging.INFO):
        chosen = choose_half_or_full(load_with(RuntimeError("no kernel image for fp16 LayerNorm")), "fp16", "fp32",
                                     "torch")
    assert chosen.precision == "fp32" and "fp16 failed (RuntimeError: no kernel image" in caplog.text
    with pytest.raises(RuntimeError, match="illegal memory access"):  # fp32 in this context would fail too
        choose_half_or_full(load_with(RuntimeError("CUDA error: an illegal memory access was encountered")),
                            "fp16", "fp32", "torch")


def test_fp16_is_not_served_unchecked_when_fp32_cannot_be_loaded():
    def load(precision):
        if precision == "fp32":
            raise ModelLoadError("onnx/model.fp32.onnx: no such file")
        return Scorer("fp16", np.zeros((40, 7)))

    with pytest.raises(ModelLoadError, match="fp16 is served only once its scores are checked against fp32"):
        choose_half_or_full(load, "fp16", "fp32", "ONNX on cuda")


def test_agreement_counts_decisions_at_the_threshold():
    expected = np.array([[0.4, 0.6], [0.49, 0.9]], np.float32)
    found = agreement(expected, np.array([[0.4, 0.6], [0.51, 0.9]], np.float32))
    assert found.decisions_agree == 0.75 and found.max_abs_diff == pytest.approx(0.02, abs=1e-6)
    assert not found.within(None, HALF_MIN_DECISIONS_AGREE) and found.within(None, 0.75)
