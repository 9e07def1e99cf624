"""The torch device and threads of this process, and what a device error means: retry smaller, or give up."""

from __future__ import annotations

import os
import sys

# Markers of a CUDA error that poisons the process's context (every later call fails the same way), as torch
# and ONNX Runtime word them. Out-of-memory is not among them: it passes once the batch is smaller.
FATAL_DEVICE_ERRORS = (
    "CUDA error", "CUDA failure", "CUDNN_STATUS", "CUBLAS_STATUS", "cudaError", "device-side assert",
    "illegal memory access", "illegal instruction", "unspecified launch failure", "uncorrectable ECC",
    "misaligned address", "CUDA driver", "NVRTC",
)
OUT_OF_MEMORY = ("out of memory", "Failed to allocate memory", "CUDNN_STATUS_ALLOC_FAILED",
                 "CUBLAS_STATUS_ALLOC_FAILED")
GPU_WORKER_THREADS = 2  # a GPU worker's host threads do little but pad and copy; more only contend with requests


def _loaded_torch():
    """torch if this process has imported it, else None. Front ends import this module (through serving.server)
    and so does a simulated engine, neither of which runs torch: they should not pay for importing it, and no
    torch error can come from a process without torch."""
    return sys.modules.get("torch")


def pick_device(requested: str = "auto") -> str:
    """'auto' is the first CUDA device when one is present, else the CPU; anything else is taken as given.

    Called in a worker, never in the process that forks them (see serving.gpus)."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available")
    return requested


def is_out_of_memory(exc: BaseException) -> bool:
    """A device allocation failed (torch's OutOfMemoryError, or ONNX Runtime's allocator on CUDA)."""
    torch = _loaded_torch()
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return _from_runtime(exc) and any(marker in str(exc) for marker in OUT_OF_MEMORY)


def _from_runtime(exc: BaseException) -> bool:
    """Raised by torch (RuntimeError and its subclasses) or ONNX Runtime (its own Exception subclasses)."""
    return isinstance(exc, (RuntimeError, MemoryError)) or type(exc).__module__.startswith("onnxruntime")


def fatal_device_error(exc: BaseException) -> str | None:
    """The reason, when `exc` is a device error that leaves this process's CUDA context unusable; else None."""
    if is_out_of_memory(exc):
        return None
    message = str(exc)
    accelerator_error = getattr(_loaded_torch(), "AcceleratorError", None)
    if (accelerator_error is not None and isinstance(exc, accelerator_error)) or (
            _from_runtime(exc) and any(marker in message for marker in FATAL_DEVICE_ERRORS)):
        return f"{type(exc).__name__}: {message.strip().splitlines()[0][:300] if message.strip() else ''}"
    return None


def predict_splitting_on_oom(predict, batch: list):
    """Run `predict(batch)`; on device out-of-memory (torch or ONNX Runtime), free torch's cache and retry each
    half instead of failing."""
    import numpy as np

    try:
        return predict(batch)
    except Exception as exc:
        if len(batch) == 1 or not is_out_of_memory(exc):
            raise
    torch = _loaded_torch()
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    half = len(batch) // 2
    return np.concatenate([predict_splitting_on_oom(predict, batch[:half]),
                           predict_splitting_on_oom(predict, batch[half:])])


def worker_threads(threads: int, workers: int, device: str = "cpu") -> int:
    """Intra-op threads for this worker: `threads`, else on CPU this machine's cores shared among the workers,
    on a GPU GPU_WORKER_THREADS."""
    if device.startswith("cuda"):
        return threads or GPU_WORKER_THREADS
    return threads or max(1, (os.cpu_count() or 1) // max(1, workers))


def set_torch_threads(threads: int, workers: int, device: str = "cpu") -> int:
    """Set torch's intra-op threads to `worker_threads(...)`, and return the count."""
    import torch

    count = worker_threads(threads, workers, device)
    torch.set_num_threads(count)
    return count


def torch_runs_on_any_thread(device: str) -> bool:
    """Torch on a CPU with several intra-op threads keeps an OpenMP team per calling thread (and runs 25-55%
    slower off the thread that made it, as measured here), so only single-threaded CPU or GPU torch may be
    called from any request thread."""
    import torch

    return not device.startswith("cpu") or torch.get_num_threads() == 1
