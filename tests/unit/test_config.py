"""Settings: SageMaker's variables, ours, flags over both, and validation with the variable named."""

from __future__ import annotations

import pytest

from serving.config import Settings
from serving.engine.batching import PaddingRule


def test_sagemaker_and_serving_variables_are_read():
    env = {"SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
           "SAGEMAKER_MODEL_SERVER_TIMEOUT": "30", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "2",
           "SERVING_MAX_BATCH_SIZE": "64", "SERVING_MAX_BATCH_DELAY_MS": "2.5", "SERVING_DEVICE": "cpu"}
    settings = Settings.from_env(env)
    assert (settings.port, settings.workers, settings.timeout_s) == (9000, 3, 30)
    assert settings.max_payload_bytes == 2 * 1024 * 1024
    assert (settings.max_batch_size, settings.max_batch_delay_ms, settings.device) == (64, 2.5, "cpu")


def test_defaults_and_flags_override_the_environment():
    assert Settings.from_env({}).port == 8080 and Settings.from_env({}).timeout_s == 55
    assert Settings.from_env({}).max_payload_mb == 6
    assert Settings.from_env({"SERVING_MAX_BATCH_SIZE": "64"}, max_batch_size=8, port=None).max_batch_size == 8


@pytest.mark.parametrize(
    ("env", "message"),
    [({"SERVING_MAX_BATCH_SIZE": "0"}, "max_batch_size"), ({"SAGEMAKER_BIND_TO_PORT": "http"}, "SAGEMAKER_BIND"),
     ({"SERVING_MAX_BATCH_PADDING": "2"}, "max_batch_padding"), ({"SERVING_BATCHING": "maybe"}, "batching"),
     ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "-1"}, "max_payload_mb")],
)
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_auto_padding_rule_is_the_break_even_point_on_cpu_and_no_bound_elsewhere():
    assert PaddingRule.choose(0.5, "cpu") == PaddingRule(share=0.5)  # as set
    assert PaddingRule.choose(-1, "cuda") == PaddingRule() and PaddingRule.choose(-1, "cpu") == PaddingRule(0.2)
    token_bound = {10: 0.02, 100: 0.11}  # 10 ms fixed, 1 ms per token: a text may bring 10 padding tokens
    fixed_cost = {10: 0.0101, 100: 0.011}  # 10 ms fixed, 0.01 ms per token: 1000
    assert PaddingRule.choose(-1, "cpu", token_bound) == PaddingRule(per_text=10.0)
    assert PaddingRule.choose(-1, "cpu", fixed_cost) == PaddingRule(per_text=1000.0)
    assert PaddingRule.choose(-1, "cpu", {10: 0.002, 100: 0.001}) == PaddingRule()  # noise: no per-token cost


def test_multi_model_mode_is_read_as_sagemaker_sets_it():
    assert Settings.from_env({"SAGEMAKER_MULTI_MODEL": "true"}).multi_model is True
    assert Settings.from_env({"SAGEMAKER_MULTI_MODEL": "True"}).multi_model is True
    assert Settings.from_env({"SAGEMAKER_MULTI_MODEL": "false"}).multi_model is False
    assert Settings.from_env({}).multi_model is False
    with pytest.raises(ValueError, match="SAGEMAKER_MULTI_MODEL"):
        Settings.from_env({"SAGEMAKER_MULTI_MODEL": "maybe"})
    with pytest.raises(ValueError, match="layout engines"):
        Settings.from_env({"SAGEMAKER_MULTI_MODEL": "1", "SERVING_LAYOUT": "workers"})
    settings = Settings.from_env({"SERVING_MULTI_MODEL": "yes", "SERVING_MODELS_ROOT": "/m",
                                  "SERVING_MODELS_MEMORY_MB": "512"})
    assert (settings.multi_model, settings.models_root, settings.models_memory_mb) == (True, "/m", 512.0)
