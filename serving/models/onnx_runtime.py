"""ONNX Runtime classifiers: the same text side as the torch ones, scored by an exported graph in onnx/."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from serving.classifier import EncodedText, Scores, logits_to_scores
from serving.errors import ModelLoadError
from serving.models.rnn import RNNText
from serving.models.roberta import RobertaText
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


def open_session(path: Path, device: str, threads: int):
    """An InferenceSession on CUDA (TensorRT first when installed) or the CPU with `threads` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelLoadError("backend onnx needs onnxruntime (CPU) or onnxruntime-gpu installed") from exc
    if not path.is_file():
        raise ModelLoadError(f"{path}: ONNX variant missing; run `toxserve export --model-dir {path.parent.parent}`")
    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ModelLoadError(f"device {device} asked for, but onnxruntime has no CUDA provider ({available})")
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in available]
    else:
        providers = ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ModelLoadError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc


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

    def __init__(self, model_dir: Path, device: str = "cpu", max_length: int | None = None,
                 variant: str = "fp32", threads: int = 1, graph: Path | None = None) -> None:
        super().__init__(model_dir, device, max_length)  # type: ignore[call-arg]
        self.variant = variant
        self.session = open_session(graph or onnx_path(model_dir, variant), device, threads)


class OnnxRobertaClassifier(OnnxSession, RobertaText):

    def predict_encoded(self, batch: Sequence[EncodedText]) -> Scores:
        input_ids, attention_mask = self.pad(batch)
        logits = run_session(self.session, {"input_ids": input_ids, "attention_mask": attention_mask}, self.device)
        return logits_to_scores(logits, self.problem_type)


class OnnxRNNClassifier(OnnxSession, RNNText):

    def predict_encoded(self, batch: Sequence[EncodedText]) -> Scores:
        embeddings, lengths = self.embed_numpy(batch)
        logits = run_session(self.session, {"embeddings": embeddings, "lengths": lengths}, self.device)
        return logits_to_scores(logits, self.problem_type)
