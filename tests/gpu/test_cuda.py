"""CUDA paths: half-precision scores near fp32, padding to multiples of 8, and ONNX Runtime's CUDA provider.

Skipped where CUDA is absent (tests/conftest.py skips every test marked `gpu`).
"""

from __future__ import annotations

import numpy as np
import pytest

from serving import load_classifier
from serving.corpus import read_labelled
from tests.conftest import CORPUS

pytestmark = pytest.mark.gpu
TEXTS, _ = read_labelled(CORPUS, split="test")


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_scores_stay_near_fp32(roberta_dir, dtype):
    fp32 = load_classifier(roberta_dir, device="cuda").predict(TEXTS)
    half = load_classifier(roberta_dir, device="cuda", dtype=dtype).predict(TEXTS)
    assert np.abs(fp32 - half).max() < 0.05 and ((fp32 >= 0.5) == (half >= 0.5)).mean() >= 0.99


def test_cuda_pads_to_multiples_of_8_without_changing_scores(roberta_dir):
    gpu = load_classifier(roberta_dir, device="cuda")
    ids, _ = gpu.pad(gpu.encode(["a b c"]))
    assert ids.shape[1] % 8 == 0
    np.testing.assert_allclose(gpu.predict(TEXTS[:32]), load_classifier(roberta_dir).predict(TEXTS[:32]), atol=1e-3)


def test_onnx_on_the_cuda_provider(roberta_dir):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here")
    onnx = load_classifier(roberta_dir, device="cuda", backend="onnx", variant="fp16")
    assert onnx.session.get_providers()[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    reference = load_classifier(roberta_dir).predict(TEXTS[:32])
    assert np.abs(onnx.predict(TEXTS[:32]) - reference).max() < 0.05


def test_a_multi_model_engine_frees_device_memory_on_unload(demo_dir, tmp_path):
    """Twenty loads and unloads of the demo RoBERTa on the GPU leave torch's allocator where one load left it, and
    each unload gives back (near) what its load took."""
    import torch

    from serving.config import Settings
    from serving.engine.main import load_service
    from serving.engine.models import EngineModels

    settings = Settings(multi_model=True, backend="torch", models_root=str(tmp_path))
    models = EngineModels(settings, "cuda", lambda s, folder, name: load_service(s, 0, "cuda", 1, folder, name))
    models.load("warm", demo_dir / "roberta")
    models.unload("warm", drain_s=5)
    baseline = torch.cuda.memory_reserved()
    for _ in range(20):
        taken = models.load("cycled", demo_dir / "roberta")["measured"]["device_bytes"]
        freed = models.unload("cycled", drain_s=5)["freed"]["device_bytes"]
        assert taken > 0 and freed >= 0.9 * taken, (taken, freed)
    assert torch.cuda.memory_reserved() <= baseline * 1.05 + 2**20
