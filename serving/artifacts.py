"""SageMaker model folders and `model.tar.gz` archives -> a loaded Classifier of the right family."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from serving.classifier import Classifier
from serving.errors import ModelLoadError

log = logging.getLogger(__name__)

SAGEMAKER_BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"  # the toolkit's name; moved only by tests (a fake /opt/ml)
DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "model_artifacts" / "demo" / "roberta"


def resolve_model_dir(path: str | os.PathLike | None = None, extract_root: Path | None = None) -> Path:
    """The folder to load: `path` (a folder or a .tar.gz, extracted safely), else /opt/ml/model, else the demo."""
    if path is None:
        sagemaker_model_dir = Path(os.environ.get(SAGEMAKER_BASE_DIR_ENV, "/opt/ml")) / "model"
        has_model = sagemaker_model_dir.is_dir() and any(sagemaker_model_dir.iterdir())
        path = sagemaker_model_dir if has_model else DEMO_MODEL_DIR
    path = Path(path)
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        target = Path(tempfile.mkdtemp(prefix="model-", dir=extract_root))
        atexit.register(remove_when_owner_exits, target, os.getpid())
        extract_archive(path, target)
        return target
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such model folder or archive")
    return path


def remove_when_owner_exits(folder: Path, owner_pid: int) -> None:
    """The extracted folder lives as long as the process that extracted it (serve's master): forked workers
    inherit this exit hook, and one that exits (replaced, recycled) must not delete its successor's model."""
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)


def extract_archive(archive: Path, target: Path) -> None:
    """Extract a model archive, refusing absolute paths, `..`, links out of the folder and device files."""
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                _check_member(member, archive)
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ModelLoadError(f"{archive}: unreadable or unsafe archive ({exc})") from exc


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ModelLoadError(f"{archive}: refusing absolute path {name!r}")
    if ".." in Path(name).parts:
        raise ModelLoadError(f"{archive}: refusing path with '..': {name!r}")
    if member.issym() or member.islnk():
        link = Path(member.linkname)
        base = Path(name).parent if member.issym() else Path()
        if link.is_absolute() or not _stays_inside(base / link):
            raise ModelLoadError(f"{archive}: refusing link {name!r} -> {member.linkname!r} out of the folder")
    elif not (member.isfile() or member.isdir()):
        raise ModelLoadError(f"{archive}: refusing special file {name!r}")


def _stays_inside(relative: Path) -> bool:
    depth = 0
    for part in relative.parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return False
    return True


def detect_family(model_dir: Path) -> str:
    """'roberta' or 'rnn', from config.json; anything else is a clear start-up error."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{model_dir}: config.json is missing (not a model folder?)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{config_path}: not valid JSON ({exc})") from exc
    from serving.models.rnn_text import ARCHITECTURE
    from serving.models.roberta_text import ARCHITECTURES

    if config.get("architecture") == ARCHITECTURE:
        return "rnn"
    if set(config.get("architectures") or []) & set(ARCHITECTURES):
        return "roberta"
    found = config.get("architectures") or config.get("architecture")
    raise ModelLoadError(
        f"{config_path}: unknown architecture {found!r}; expected one of {(*ARCHITECTURES, ARCHITECTURE)}"
    )


def choose_backend(model_dir: Path, device: str) -> tuple[str, str, str]:
    """`--backend auto`: ONNX Runtime fp32 on the CPU when the folder carries a current, parity-checked fp32
    export (the same scores, 1.2-1.4x the served throughput measured here), torch otherwise. Never a lossy variant.
    Returns (backend, variant, why)."""
    if not device.startswith("cpu"):
        return "torch", "fp32", f"device {device}; ONNX Runtime on GPUs only when asked for (--backend onnx)"
    from serving.models.onnx_runtime import stale_export_reason

    reason = stale_export_reason(model_dir, "fp32")
    if reason is not None:
        return "torch", "fp32", reason
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch", "fp32", "onnxruntime is not installed"
    return "onnx", "fp32", "the folder's fp32 ONNX export is current and passed parity"


def load_classifier(
    path: str | os.PathLike | None = None, device: str = "cpu", max_length: int | None = None,
    backend: str = "auto", variant: str = "fp32", threads: int = 1, dtype: str = "auto",
    provider: str = "cuda", cache_dir: str = "", max_text_chars: int = 0, max_word_chars: int = 0,
    max_batch_size: int = 256, accelerator=None, spin: bool = True,
) -> Classifier:
    """Resolve, detect and load: the one call the CLI and the server make.

    On a GPU, reduced precision is checked where it runs: torch `dtype` auto and an ONNX fp16 graph are served
    only when their scores agree with fp32 on the same device (serving.engine.precision), else fp32 with the reason.
    `max_text_chars` / `max_word_chars` (LSTM) override the input caps (0: the model's defaults);
    `max_batch_size` bounds the shapes TensorRT's engine is built for; `accelerator` (a SimulatedAccelerator)
    is the device of backend sim (default: device 0 at the default costs); `spin` False keeps ONNX Runtime's CPU
    threads from spinning between forwards (serving.models.onnx_runtime.open_session)."""
    if backend == "sim":
        classifier = _load_simulated(path, max_length, accelerator)
    else:
        classifier = _load(path, device, max_length, backend, variant, threads, dtype, provider, cache_dir,
                           max_batch_size, spin)
    return with_input_caps(classifier, max_text_chars, max_word_chars)


def with_input_caps(classifier: Classifier, max_text_chars: int, max_word_chars: int) -> Classifier:
    """The settings' caps on a text's characters and (LSTM) a word's characters; 0 keeps the model's default."""
    classifier.max_text_chars = max_text_chars
    if max_word_chars and hasattr(classifier, "max_word_chars"):
        classifier.max_word_chars = max_word_chars  # type: ignore[attr-defined]
    return classifier


def _load_simulated(path, max_length: int | None, accelerator) -> Classifier:
    from serving.models.simulated import SimulatedAccelerator, SimulatedRNNClassifier, SimulatedRobertaClassifier

    model_dir = resolve_model_dir(path)
    family = detect_family(model_dir)
    accelerator = accelerator or SimulatedAccelerator()
    log.info("loading %s model's text side from %s on simulated accelerator %s (%.3g ms + %.3g us/token)", family,
             model_dir, accelerator.name, accelerator.fixed_ms, accelerator.per_token_us)
    runtime = SimulatedRNNClassifier if family == "rnn" else SimulatedRobertaClassifier
    return runtime(model_dir, accelerator, max_length)


def _load(path, device: str, max_length: int | None, backend: str, variant: str, threads: int, dtype: str,
          provider: str, cache_dir: str, max_batch_size: int, spin: bool = True) -> Classifier:
    model_dir = resolve_model_dir(path)
    family = detect_family(model_dir)
    if backend == "auto":
        backend, variant, why = choose_backend(model_dir, device)
        log.info("backend auto: %s (%s)", backend, why)
    elif backend == "onnx":  # asked for by name: served even if stale (auto has checked its own pick)
        from serving.models.onnx_runtime import stale_export_reason

        stale = stale_export_reason(model_dir, variant)
        if stale is not None:
            log.warning("ONNX %s asked for although %s; serving it as asked", variant, stale)
    log.info("loading %s model from %s on %s with %s", family, model_dir, device, backend)
    on_gpu = device.startswith("cuda")
    if backend == "onnx":
        from serving.models.onnx_runtime import OnnxRNNClassifier, OnnxRobertaClassifier

        runtime = OnnxRNNClassifier if family == "rnn" else OnnxRobertaClassifier

        def load_onnx(chosen: str) -> Classifier:
            return runtime(model_dir, device=device, max_length=max_length, variant=chosen, threads=threads,
                           provider=provider, cache_dir=cache_dir, max_batch_size=max_batch_size, spin=spin)

        if on_gpu and variant == "fp16":
            from serving.engine.precision import choose_half_or_full

            return choose_half_or_full(load_onnx, "fp16", "fp32", f"ONNX on {device}")
        return load_onnx(variant)
    if family == "rnn":
        from serving.models.rnn import RNNClassifier

        return RNNClassifier(model_dir, device=device, max_length=max_length)
    from serving.models.roberta import RobertaClassifier

    def load_torch(chosen: str) -> Classifier:
        return RobertaClassifier(model_dir, device=device, max_length=max_length, dtype=chosen)

    if dtype == "auto" and on_gpu:
        from serving.engine.precision import choose_half_or_full

        return choose_half_or_full(load_torch, "fp16", "fp32", f"torch on {device}")
    return load_torch("fp32" if dtype == "auto" else dtype)
