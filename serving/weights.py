"""Reading weight files safely: safetensors first, `.bin` only through `torch.load(weights_only=True)`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from serving.errors import ModelLoadError

if TYPE_CHECKING:  # torch is imported where weights are read: the ONNX runtime names WEIGHT_FILES without it
    import torch
    from torch import nn

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_state_dict(model_dir: Path, names: tuple[str, ...] = WEIGHT_FILES) -> dict[str, torch.Tensor]:
    """The first weight file present in `model_dir`; a clear ModelLoadError if none loads."""
    for name in names:
        path = model_dir / name
        if path.exists():
            return _read(path)
    raise ModelLoadError(f"{model_dir}: no weights file (looked for {', '.join(names)})")


def _read(path: Path) -> dict[str, torch.Tensor]:
    import torch  # outside the try: a missing torch is not a corrupt file

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and pickle raise many kinds; all mean "bad file"
        raise ModelLoadError(f"{path}: corrupt or unreadable weights ({type(exc).__name__}: {exc})") from exc


def assign_weights(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load `state` into `model`; missing tensors or wrong shapes name the file at fault."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelLoadError(f"{source}: weights do not fit the config ({exc})") from exc
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:5])
        raise ModelLoadError(f"{source}: weights lack {len(result.missing_keys)} tensors ({shown}, ...)")
