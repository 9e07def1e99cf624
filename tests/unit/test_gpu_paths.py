"""The GPU paths' failure modes, made visible on a CPU: GPU naming and layout, bf16 refusal, ONNX Runtime provider
verification and TensorRT options, and which device errors split a batch or give the device up."""

from __future__ import annotations

import json
import subprocess
import types

import numpy as np
import pytest
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

from serving import gpus
from serving.engine.device import fatal_device_error, is_out_of_memory, predict_splitting_on_oom
from serving.errors import ModelLoadError
from serving.gpus import Gpu, check_dtype, next_slot, visible_ids
from serving.models.onnx_runtime import ShapeRange, provider_list, verify_providers

T4 = Gpu("GPU-5e6c1a2b-0000-0000-0000-000000000000", "Tesla T4", (7, 5), 16 * 2**30)
A10G = Gpu("1", "NVIDIA A10G", (8, 6), 24 * 2**30)


def test_the_hosts_cuda_visible_devices_names_the_gpus_indices_or_uuids():
    assert visible_ids(2, {}) == ["0", "1"]
    assert visible_ids(2, {"CUDA_VISIBLE_DEVICES": "3,1"}) == ["3", "1"]
    uuids = "GPU-5e6c1a2b-aaaa,GPU-77d0e9f1-bbbb"
    assert visible_ids(2, {"CUDA_VISIBLE_DEVICES": uuids}) == uuids.split(",")
    assert visible_ids(0, {"CUDA_VISIBLE_DEVICES": ""}) == []


def test_workers_spread_evenly_and_a_replacement_takes_the_freed_gpu():
    slots: list[int] = []
    for _ in range(5):
        slots.append(next_slot(slots, 2))
    assert slots == [0, 1, 0, 1, 0]
    slots.remove(1)  # a worker on GPU 1 died
    assert next_slot(slots, 2) == 1


def test_bf16_is_refused_below_compute_capability_8_naming_the_gpu():
    with pytest.raises(ValueError, match=r"bf16 needs compute capability 8\.0.*Tesla T4.*compute 7\.5"):
        check_dtype("bf16", [A10G, T4])
    check_dtype("bf16", [A10G])
    check_dtype("fp16", [T4])


def test_cuda_provider_is_asked_for_by_itself_and_tensorrt_only_when_named(tmp_path):
    shapes = ShapeRange(("input_ids", "attention_mask"), max_batch=32, max_length=512)
    cuda = provider_list("cuda", "cuda", tmp_path, shapes)
    assert [p[0] if isinstance(p, tuple) else p for p in cuda] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_name, trt = provider_list("cuda:1", "tensorrt", tmp_path / "trt", shapes)[0]
    assert trt_name == "TensorrtExecutionProvider" and trt["device_id"] == 1
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(tmp_path / "trt")
    assert (tmp_path / "trt").is_dir()
    assert trt["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert trt["trt_profile_max_shapes"] == "input_ids:32x512,attention_mask:32x512"
    assert trt["trt_fp16_enable"] is False  # an fp32 graph is not silently run in fp16
    half = provider_list("cuda", "tensorrt", tmp_path, ShapeRange(shapes.inputs, 32, 512, fp16=True))[0][1]
    assert half["trt_fp16_enable"] is True
    rnn = ShapeRange(("embeddings", "lengths"), max_batch=8, max_length=100, feature_dim=300)
    assert rnn.profile(8, 100) == "embeddings:8x100x300,lengths:8"  # rank 3, as the graph's input
    assert provider_list("cpu", "tensorrt", tmp_path, shapes) == ["CPUExecutionProvider"]


class SessionThatFellBack:
    """What ONNX Runtime leaves behind when the CUDA provider fails to start: a session on the CPU."""

    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_a_session_without_the_provider_asked_for_fails_the_load():
    fell_back = r"CUDAExecutionProvider was asked for but .* got \['CPUExecutionProvider'\]"
    with pytest.raises(ModelLoadError, match=fell_back):
        verify_providers(SessionThatFellBack(), [("CUDAExecutionProvider", {}), "CPUExecutionProvider"])
    verify_providers(SessionThatFellBack(), ["CPUExecutionProvider"])


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered"),
    RuntimeError("CUDA error: uncorrectable ECC error encountered"),
    Fail("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700: an illegal memory access was encountered"),
    RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUBLAS_STATUS_EXECUTION_FAILED"),
])
def test_errors_that_poison_the_cuda_context_give_the_device_up(error):
    assert fatal_device_error(error) is not None and not is_out_of_memory(error)


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer"),
    Fail("CUDA failure 2: out of memory"),
])
def test_out_of_memory_is_retried_smaller_not_fatal(error):
    assert is_out_of_memory(error) and fatal_device_error(error) is None


def test_other_errors_are_neither():
    for error in (ValueError("CUDA error in a user's message"), RuntimeError("shape mismatch"), KeyError("x")):
        assert fatal_device_error(error) is None and not is_out_of_memory(error)


def test_onnx_runtime_out_of_memory_splits_the_batch_and_retries_the_halves():
    calls = []

    def predict(batch):
        calls.append(len(batch))
        if len(batch) > 2:
            raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned "
                                   "while running MatMul node. Failed to allocate memory for requested buffer")
        return np.array([[x] for x in batch], dtype=np.float32)

    out = predict_splitting_on_oom(predict, list(range(7)))
    assert out[:, 0].tolist() == list(range(7)) and calls[:3] == [7, 3, 1]
    with pytest.raises(ValueError):  # anything else is not retried
        predict_splitting_on_oom(lambda batch: (_ for _ in ()).throw(ValueError("bad")), [1, 2, 3])


def probe_answers(monkeypatch, stdout: str, returncode: int = 0, stderr: str = "") -> None:
    """The probe child, as if it had printed `stdout` (serving.gpus's own subprocess module replaced)."""
    def run(command, **kwargs):
        assert command[1:3] == ["-P", "-c"]  # the working directory cannot shadow torch
        return subprocess.CompletedProcess(command, returncode, stdout=stdout, stderr=stderr)
    monkeypatch.setattr(gpus, "subprocess", types.SimpleNamespace(run=run, TimeoutExpired=subprocess.TimeoutExpired))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def report(devices: list, cuda: str | None = "12.8") -> str:
    return f"{gpus.PROBE_MARK} " + json.dumps({"devices": devices, "built": cuda is not None, "torch": "2.13.0",
                                               "cuda": cuda})


def test_the_probe_report_is_found_among_other_output(monkeypatch):
    h100 = {"name": "NVIDIA H100", "capability": [9, 0], "memory_bytes": 80 * 2**30}
    probe_answers(monkeypatch, "a library's banner\n" + report([h100, h100]) + "\nprinted at exit\n")
    found = gpus.discover("auto")
    assert [g.name for g in found] == ["NVIDIA H100"] * 2 and found[1].capability == (9, 0)
    probe_answers(monkeypatch, "text with no newline" + report([h100]).replace(gpus.PROBE_MARK, "\n" + gpus.PROBE_MARK))
    assert [g.visible_id for g in gpus.discover("auto")] == ["0"]


@pytest.mark.parametrize("stdout", ["", "no report here\n", f"{gpus.PROBE_MARK} not json\n",
                                    f"{gpus.PROBE_MARK} " + json.dumps({"devices": [{"name": "x"}]}),
                                    report([{"name": "x", "capability": [9], "memory_bytes": 1}])])
def test_a_probe_that_answers_something_else_is_a_clear_error(monkeypatch, stdout):
    probe_answers(monkeypatch, stdout)
    with pytest.raises(RuntimeError, match="the GPU probe answered something other than its report"):
        gpus.discover("auto")


def test_a_failing_probe_is_a_clear_error(monkeypatch):
    probe_answers(monkeypatch, "", returncode=-11, stderr="boom")
    with pytest.raises(RuntimeError, match=r"the GPU probe failed \(exit status -11\): boom"):
        gpus.discover("cuda")


def test_why_a_cuda_build_sees_no_gpu_is_logged(monkeypatch, caplog):
    probe_answers(monkeypatch, report([]), stderr="UserWarning: CUDA initialization: The NVIDIA driver is too old")
    with caplog.at_level("WARNING", logger="serving.gpus"):
        assert gpus.discover("auto") == []
    assert "driver is too old" in caplog.text


def test_cuda_asked_for_with_a_torch_built_without_it_says_so(monkeypatch):
    probe_answers(monkeypatch, report([], cuda=None))
    assert gpus.discover("auto") == []
    with pytest.raises(ValueError, match="torch 2.13.0 is a build without CUDA"):
        gpus.discover("cuda")
    probe_answers(monkeypatch, report([]))
    with pytest.raises(ValueError, match="no CUDA GPU is visible .* CUDA build 12.8: a driver older"):
        gpus.discover("cuda:0")


def test_the_real_probe_answers_on_this_machine():
    found = gpus.probe()
    assert found["torch"] == torch.__version__ and found["cuda"] == torch.version.cuda
    assert found["built"] == torch.backends.cuda.is_built()
    assert len(found["devices"]) == torch.cuda.device_count()
