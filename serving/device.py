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
