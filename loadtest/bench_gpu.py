"""The GPU check, one command for the first GPU (no network needed; about 5 minutes on one H100):

1. parity on the device: torch fp16 and ONNX Runtime CUDA (fp32, fp16) against torch fp32 on the same GPU, for
   the demo RoBERTox and a random-weight roberta-base shape (serving.engine.precision's tolerance);
2. offline seq/s at sequence length 128, batch 1..256: torch fp32/fp16/bf16 (SDPA) and ONNX Runtime CUDA;
3. the real `serve` on the GPU (dtype auto: the start-up fp16 check decides), closed loop at concurrency 1
   and 64 with the benchmark text mix.
JSON out, written after each stage. The demo models must travel with the tree (carry model_artifacts/demo).

    python loadtest/bench_gpu.py --out $OUT/bench_gpu.json          # --device cpu --quick: a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadtest.bench_server import closed_loop_levels, random_roberta, text_mix  # noqa: E402

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTHS = (128,)


def timed(run, seconds: float, sync) -> float:
    """Calls per second of `run` over about `seconds`, after 3 warm-up calls."""
    for _ in range(3):
        run()
    sync()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        calls += 1
    sync()
    return calls / (time.perf_counter() - started)


def torch_grid(model_dir: Path, device: str, dtypes, seconds: float, batches, lengths) -> dict:
    import torch

    from serving.models.roberta import RobertaClassifier

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    results = {}
    for dtype in dtypes:
        classifier = RobertaClassifier(model_dir, device=device, dtype=dtype)
        for batch in batches:
            for length in lengths:
                ids = torch.randint(5, 1900, (batch, length), device=device)
                mask = torch.ones_like(ids)

                def run(ids=ids, mask=mask, model=classifier.model):
                    with torch.inference_mode():
                        model(input_ids=ids, attention_mask=mask)

                results[f"torch {dtype} b{batch} s{length}"] = round(timed(run, seconds, sync) * batch, 1)
                key = f"torch {dtype} b{batch} s{length}"
                print(f"{key}: {results[key]} seq/s", flush=True)
        del classifier
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return results


def ensure_onnx(model_dir: Path, variants: list[str]) -> None:
    from serving.models.onnx_runtime import onnx_path
    from serving.tools.export import export

    if not all(onnx_path(model_dir, v).exists() for v in variants):
        export(model_dir, variants, text_mix(16), force=True)


def parity(model_dir: Path, device: str, texts: list[str]) -> dict:
    """Each reduced-precision or ONNX path against torch fp32 on the same device, as serve's start-up check."""
    from serving import load_classifier
    from serving.engine.precision import HALF_MAX_ABS_DIFF, HALF_MIN_DECISIONS_AGREE, agreement

    reference = load_classifier(model_dir, device=device, backend="torch", dtype="fp32").predict(texts)
    results: dict = {"texts": len(texts), "tolerance": {"max_abs_diff": HALF_MAX_ABS_DIFF,
                                                        "decisions_agree": HALF_MIN_DECISIONS_AGREE}}
    candidates = [("torch fp16", dict(backend="torch", dtype="fp16")),
                  ("onnx fp32", dict(backend="onnx", variant="fp32")),
                  ("onnx fp16", dict(backend="onnx", variant="fp16"))]
    for name, options in candidates if device.startswith("cuda") else candidates[1:2]:
        try:
            found = agreement(reference, load_classifier(model_dir, device=device, **options).predict(texts))
            results[name] = {"max_abs_diff": found.max_abs_diff, "decisions_agree": found.decisions_agree}
        except Exception as exc:  # a GPU check reports every failure and goes on
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"parity {model_dir.name} {name}: {results[name]}", flush=True)
    return results


def onnx_grid(model_dir: Path, device: str, seconds: float, batches, lengths) -> dict:
    from serving.models.onnx_runtime import onnx_path, open_session

    variant = "fp16" if device.startswith("cuda") else "fp32"
    session = open_session(onnx_path(model_dir, variant), device, 1)
    provider = session.get_providers()[0]
    results = {"provider": provider}
    for batch in batches:
        for length in lengths:
            feed = {"input_ids": np.random.randint(5, 1900, (batch, length)).astype(np.int64),
                    "attention_mask": np.ones((batch, length), dtype=np.int64)}
            rate = timed(lambda feed=feed: session.run(["logits"], feed), seconds, lambda: None) * batch
            results[f"onnx {variant} b{batch} s{length}"] = round(rate, 1)
            print(f"onnx {variant} ({provider}) batch {batch} seq {length}: {rate:.1f} seq/s", flush=True)
    return results


def served(model_dir: Path, device: str, seconds: float, levels: tuple[int, ...], log_path: Path) -> list[dict]:
    flags = ["--device", device, "--max-length", "128", "--max-batch-size", "128", "--max-batch-tokens", "16384",
             "--backend", "torch"]
    return closed_loop_levels(model_dir, text_mix(2000), flags, levels, seconds, log_path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny grid, for a smoke run on CPU")
    parser.add_argument("--seconds", type=float, default=2.0, help="per grid point")
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import torch

    on_gpu = args.device.startswith("cuda")
    report: dict = {"device": torch.cuda.get_device_name(0) if on_gpu else "cpu", "torch": torch.__version__,
                    "capability": list(torch.cuda.get_device_capability(0)) if on_gpu else None}
    save = lambda: args.out.write_text(json.dumps(report, indent=2))  # noqa: E731
    demo = REPO / "model_artifacts" / "demo" / "roberta"
    shape = "tiny" if args.quick else "base"
    model_dir = random_roberta(shape, demo, Path(tempfile.gettempdir()) / f"gpu-bench-{shape}")
    variants = ["fp32", "fp16"] if on_gpu else ["fp32"]
    ensure_onnx(model_dir, variants)
    texts = text_mix(64 if args.quick else 512)
    report["parity"] = {"demo": parity(demo, args.device, texts), shape: parity(model_dir, args.device, texts)}
    save()
    batches, lengths = ((1, 8), (64,)) if args.quick else (BATCHES, LENGTHS)
    seconds = 0.3 if args.quick else args.seconds
    dtypes = ("fp32", "fp16", "bf16") if on_gpu and torch.cuda.get_device_capability(0) >= (8, 0) else \
        ("fp32", "fp16") if on_gpu else ("fp32",)
    report["offline"] = torch_grid(model_dir, args.device, dtypes, seconds, batches, lengths)
    report["offline"].update(onnx_grid(model_dir, args.device, seconds, batches, lengths))
    save()
    log_path = args.out.with_suffix(".serve.log")
    report["server"] = served(model_dir, args.device, 5 if args.quick else 30, (1, 8) if args.quick else (1, 64),
                              log_path)
    report["server_log_layout"] = [line for line in log_path.read_text().splitlines()
                                   if "layout:" in line or "pinned:" in line or "serving fp" in line]
    report["seconds"] = round(time.perf_counter() - started, 1)
    save()
    print(json.dumps(report["server"]), f"total {report['seconds']} s")


if __name__ == "__main__":
    main()
