"""Export a model folder to ONNX (fp32, int8, fp16) in its onnx/ subfolder, each variant checked against torch."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from serving.classifier import Classifier
from serving.engine.precision import agreement
from serving.models.onnx_runtime import (
    EXPORT_REPORT,
    ONNX_DIR,
    OnnxRNNClassifier,
    OnnxRobertaClassifier,
    onnx_path,
    weights_digest,
)

OPSET = 17
# (max |score diff|, share of label decisions at 0.5 that must agree) per variant
TOLERANCES = {"fp32": (1e-4, 1.0), "fp16": (2e-2, 0.99), "int8": (None, 0.99)}


@dataclass(frozen=True)
class Parity:
    variant: str
    max_abs_diff: float
    decisions_agree: float
    texts: int
    seconds: float
    passed: bool


def _export_roberta(classifier, path: Path) -> None:
    model = classifier.model
    model.config._attn_implementation = "eager"  # plain ops that ORT's optimizer fuses into Attention

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    ids, mask = classifier.pad(classifier.encode(["a short one", "a somewhat longer sample text for export"]))
    raw = path.with_suffix(".raw.onnx")
    torch.onnx.export(
        Logits().eval(), (torch.from_numpy(ids), torch.from_numpy(mask)), str(raw),
        input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=OPSET, dynamo=False,
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                      "logits": {0: "batch"}},
    )
    from onnxruntime.transformers.optimizer import optimize_model

    config = classifier.config
    optimized = optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=1)
    optimized.save_model_to_file(str(path))
    raw.unlink()


def _export_rnn(classifier, path: Path) -> None:
    embeddings, lengths = classifier.embed_numpy(classifier.encode(["a short one", "a longer sample text here"]))
    torch.onnx.export(
        classifier.model.eval(), (torch.from_numpy(embeddings), torch.from_numpy(lengths)), str(path),
        input_names=["embeddings", "lengths"], output_names=["logits"], opset_version=OPSET, dynamo=False,
        dynamic_axes={"embeddings": {0: "batch", 1: "words"}, "lengths": {0: "batch"}, "logits": {0: "batch"}},
    )


def _quantize_int8(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _convert_fp16(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(fp32)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(out))


def check_parity(reference: Classifier, candidate: Classifier, texts: Sequence[str], variant: str) -> Parity:
    started = time.perf_counter()
    found = agreement(reference.predict(texts), candidate.predict(texts))
    passed = found.within(*TOLERANCES[variant])
    return Parity(variant, found.max_abs_diff, found.decisions_agree, len(texts),
                  round(time.perf_counter() - started, 2), passed)


def export(model_dir: Path, variants: Sequence[str], texts: Sequence[str], force: bool = False,
           log: Callable[[str], None] = print) -> list[Parity]:
    """Write onnx/model.<variant>.onnx for each variant that passes parity (or all, with `force`), and the parity
    results with the digest of the weights they came from in onnx/export.json (what `--backend auto` checks)."""
    from serving.artifacts import load_classifier

    reference = load_classifier(model_dir, backend="torch")
    source = weights_digest(model_dir)
    target = model_dir / ONNX_DIR
    target.mkdir(exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        fp32 = Path(scratch) / "model.fp32.onnx"
        started = time.perf_counter()
        (_export_roberta if reference.family == "roberta" else _export_rnn)(reference, fp32)
        log(f"exported fp32 graph in {time.perf_counter() - started:.1f} s")
        makers: dict[str, Callable[[Path, Path], None]] = {"int8": _quantize_int8, "fp16": _convert_fp16}
        for variant in variants:
            staged = Path(scratch) / f"model.{variant}.onnx"
            if variant in makers:
                started = time.perf_counter()
                makers[variant](fp32, staged)
                log(f"built {variant} in {time.perf_counter() - started:.1f} s")
            runtime = OnnxRobertaClassifier if reference.family == "roberta" else OnnxRNNClassifier
            candidate = runtime(model_dir, variant=variant, threads=torch.get_num_threads(), graph=staged)
            parity = check_parity(reference, candidate, texts, variant)
            results.append(parity)
            verdict = "ok" if parity.passed else "FAILED, " + ("written anyway (--force)" if force else "not written")
            log(f"{variant}: max |score diff| {parity.max_abs_diff:.2e}, decisions agree "
                f"{parity.decisions_agree:.2%} on {parity.texts} texts: {verdict}")
            if parity.passed or force:
                shutil.copy(staged, onnx_path(model_dir, variant))
    report = target / EXPORT_REPORT
    previous = json.loads(report.read_text()) if report.exists() else {}
    if previous.get("source") != source:  # variants exported from other weights no longer vouch for these
        previous = {}
    previous.update({p.variant: asdict(p) for p in results}, source=source)
    report.write_text(json.dumps(previous, indent=2))
    return results

