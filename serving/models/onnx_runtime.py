"""ONNX Runtime classifiers: the same text side as the torch ones, scored by an exported graph in onnx/."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from serving.classifier import EncodedText, Scores, logits_to_scores
from serving.errors import ModelLoadError
from serving.models.rnn_text import RNNText
from serving.models.roberta_text import RobertaText
from serving.weights import WEIGHT_FILES

ONNX_DIR = "onnx"
VARIANTS = ("fp32", "fp16", "int8")
EXPORT_REPORT = "export.json"


def onnx_path(model_dir: Path, variant: str) -> Path:
    return model_dir / ONNX_DIR / f"model.{variant}.onnx"


def weights_digest(model_dir: Path) -> dict | None:
    """SHA-256 of the weight file torch would load and of config.json: what an export records as its source."""
    path = next((model_dir / name for name in WEIGHT_FILES if (model_dir / name).is_file()), None)
    if path is None:
        return None
    config = model_dir / "config.json"
    return {"file": path.name, "sha256": _sha256(path), "config_sha256": _sha256(config) if config.is_file() else None}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stale_export_reason(model_dir: Path, variant: str = "fp32") -> str | None:
    """Why the folder's ONNX `variant` must not stand in for its torch weights, or None when it may: the graph
    exists, passed its parity check, and was exported from the weights and config the folder holds now."""
    report_path = model_dir / ONNX_DIR / EXPORT_REPORT
    if not onnx_path(model_dir, variant).is_file():
        return f"no {ONNX_DIR}/model.{variant}.onnx"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return f"no readable {ONNX_DIR}/{EXPORT_REPORT}"
    if not (report.get(variant) or {}).get("passed"):
        return f"the {variant} export did not pass its parity check"
    if not report.get("source") or report["source"] != weights_digest(model_dir):
        return f"the {variant} export was not made from this folder's current weights and config"
    return None


PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@dataclass(frozen=True)
class ShapeRange:
    """The input shapes a session must serve: TensorRT builds one engine over them (optimisation profile)."""

    inputs: tuple[str, ...]
    max_batch: int
    max_length: int
    opt_batch: int = 8
    opt_length: int = 128
    feature_dim: int = 0  # the last axis of a rank-3 input (the LSTM's embeddings)
    fp16: bool = False  # the graph is the fp16 variant: TensorRT may build fp16 kernels

    def profile(self, batch: int, length: int) -> str:
        def shape(name: str) -> str:
            if name == "lengths":
                return f"{name}:{batch}"
            return f"{name}:{batch}x{length}" + (f"x{self.feature_dim}" if name == "embeddings" else "")
        return ",".join(shape(name) for name in self.inputs)


def provider_list(device: str, provider: str, cache_dir: Path, shapes: ShapeRange | None) -> list:
    """ONNX Runtime providers for `device`: the one asked for, then the CPU for the ops it lacks; TensorRT only
    when asked, with engine and timing caches in `cache_dir` and a profile covering every batch and length,
    so engines are built once (at warm-up, or read from the cache) and never on the request path."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    device_id = int(device.partition(":")[2] or 0)
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if provider != "tensorrt":
        return [cuda, "CPUExecutionProvider"]
    cache_dir.mkdir(parents=True, exist_ok=True)
    options: dict = {"device_id": device_id, "trt_engine_cache_enable": True,
                     "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": True,
                     "trt_timing_cache_path": str(cache_dir),
                     "trt_fp16_enable": bool(shapes and shapes.fp16)}  # fp32 graphs stay fp32: unchecked otherwise
    if shapes is not None:
        options.update(trt_profile_min_shapes=shapes.profile(1, 1),
                       trt_profile_opt_shapes=shapes.profile(min(shapes.opt_batch, shapes.max_batch),
                                                             min(shapes.opt_length, shapes.max_length)),
                       trt_profile_max_shapes=shapes.profile(shapes.max_batch, shapes.max_length))
    return [("TensorrtExecutionProvider", options), cuda, "CPUExecutionProvider"]


def provider_name(entry: str | tuple) -> str:
    return entry[0] if isinstance(entry, tuple) else entry


def verify_providers(session, asked: list) -> None:
    """The session runs on the accelerator asked for, or the load fails: ONNX Runtime falls back to the CPU
    silently when a provider cannot start (a CUDA or cuDNN library it needs is missing or of another version)."""
    wanted = provider_name(asked[0])
    got = session.get_providers()
    if wanted not in got:
        raise ModelLoadError(
            f"{wanted} was asked for but the ONNX Runtime session got {got}: the provider failed to start (ONNX "
            "Runtime logged why above; usually a CUDA, cuDNN or TensorRT library missing or of another version "
            "than this onnxruntime-gpu build needs)")


def open_session(path: Path, device: str, threads: int, provider: str = "cuda", cache_dir: Path | None = None,
                 shapes: ShapeRange | None = None, spin: bool = True):
    """An InferenceSession on CUDA (or TensorRT, when asked) or the CPU with `threads` intra-op threads; a load
    error when the accelerator asked for is not what the session got. `spin` False: the intra-op threads sleep
    between forwards instead of spinning (each session has its own pool, so several sessions in one process, a
    multi-model engine's, would otherwise burn the cores the busy one needs)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelLoadError("backend onnx needs onnxruntime (CPU) or onnxruntime-gpu installed") from exc
    if not path.is_file():
        raise ModelLoadError(f"{path}: ONNX variant missing; run `toxserve export --model-dir {path.parent.parent}`")
    providers = provider_list(device, provider, cache_dir or default_cache_dir(path), shapes)
    available = ort.get_available_providers()
    if provider_name(providers[0]) not in available:
        raise ModelLoadError(f"device {device} asked for {provider_name(providers[0])}, but this onnxruntime build has "
                             f"only {available} (install onnxruntime-gpu, the build the GPU image pins)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc
    verify_providers(session, providers)
    return session


def default_cache_dir(graph: Path) -> Path:
    """A writable folder per graph (the model folder may be read-only, as /opt/ml/model is)."""
    import tempfile

    return Path(tempfile.gettempdir()) / "toxserve-trt" / f"{graph.stem}-{_sha256_prefix(graph)}"


def _sha256_prefix(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def run_session(session, feeds: dict, device: str):
    """One forward; on CUDA through IO binding, so the output is allocated on the device and copied once."""
    if not device.startswith("cuda"):
        return session.run(["logits"], feeds)[0]
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    binding.bind_output("logits", "cuda")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


class OnnxSession:
    """Mixed in before a family's text side: opens the variant's graph (or a staged `graph`) after it."""

    inputs: tuple[str, ...] = ()
    max_length: int

    def __init__(self, model_dir: Path, device: str = "cpu", max_length: int | None = None,
                 variant: str = "fp32", threads: int = 1, graph: Path | None = None, provider: str = "cuda",
                 cache_dir: str = "", max_batch_size: int = 256, spin: bool = True) -> None:
        super().__init__(model_dir, device, max_length)  # type: ignore[call-arg]
        self.variant = variant
        dim = getattr(getattr(self, "vectors", None), "dim", 0)
        shapes = ShapeRange(self.inputs, max_batch_size, self.max_length, feature_dim=dim, fp16=variant == "fp16")
        self.session = open_session(graph or onnx_path(model_dir, variant), device, threads, provider,
                                    Path(cache_dir) if cache_dir else None, shapes, spin)


class OnnxRobertaClassifier(OnnxSession, RobertaText):
    inputs = ("input_ids", "attention_mask")

    def predict_encoded(self, batch: Sequence[EncodedText]) -> Scores:
        input_ids, attention_mask = self.pad(batch)
        logits = run_session(self.session, {"input_ids": input_ids, "attention_mask": attention_mask}, self.device)
        return logits_to_scores(logits, self.problem_type)


class OnnxRNNClassifier(OnnxSession, RNNText):
    inputs = ("embeddings", "lengths")

    def predict_encoded(self, batch: Sequence[EncodedText]) -> Scores:
        embeddings, lengths = self.embed_numpy(batch)
        logits = run_session(self.session, {"embeddings": embeddings, "lengths": lengths}, self.device)
        return logits_to_scores(logits, self.problem_type)
