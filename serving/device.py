"""Choosing the torch device and thread layout for this process."""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> str:
    """'auto' is the first CUDA device when one is present, else the CPU; anything else is taken as given."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available")
    return requested


def predict_splitting_on_oom(predict, batch: list):
    """Run `predict(batch)`; on CUDA out-of-memory, free the cache and retry each half instead of failing."""
    import numpy as np

    try:
        return predict(batch)
    except torch.cuda.OutOfMemoryError:
        if len(batch) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(batch) // 2
        return np.concatenate([predict_splitting_on_oom(predict, batch[:half]),
                               predict_splitting_on_oom(predict, batch[half:])])


def set_torch_threads(threads: int, workers: int) -> int:
    """Intra-op threads for this worker: `threads`, or this machine's cores shared among the workers."""
    import os

    count = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    torch.set_num_threads(count)
    return count


def torch_runs_on_any_thread(device: str) -> bool:
    """Torch on a CPU with several intra-op threads keeps an OpenMP team per calling thread (and runs 25-55%
    slower off the thread that made it, as measured here), so only single-threaded CPU or GPU torch may be
    called from any request thread."""
    return not device.startswith("cpu") or torch.get_num_threads() == 1
