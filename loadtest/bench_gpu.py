"""GPU benchmark, one command on a lent GPU machine (no network needed; under 8 minutes on one H100):

roberta-base shape (random weights, demo tokenizer): torch fp32/fp16/bf16 (SDPA) and ONNX Runtime CUDA
fp16 (TensorRT provider if present) at batch 1/8/32/128 x sequence 64/128, then the server end to end
at concurrency 64. JSON out. The demo tokenizer must travel with the tree (carry model_artifacts/demo).

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

BATCHES = (1, 8, 32, 128)
LENGTHS = (64, 128)


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


def onnx_grid(model_dir: Path, device: str, seconds: float, batches, lengths) -> dict:
    from serving.export import export
    from serving.models.onnx_runtime import onnx_path, open_session

    variant = "fp16" if device.startswith("cuda") else "fp32"
    if not onnx_path(model_dir, variant).exists():
        export(model_dir, ["fp32", variant] if variant != "fp32" else ["fp32"], text_mix(16), force=True)
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


def served(model_dir: Path, device: str, extra: list[str], seconds: float, concurrency: int) -> dict:
    flags = ["--device", device, "--max-length", "128", "--max-batch-size", "128", "--max-batch-tokens", "16384"]
    return closed_loop_levels(model_dir, text_mix(2000), [*flags, *extra], (concurrency,), seconds,
                              Path(tempfile.gettempdir()) / "gpu.log")[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny grid, for a smoke run on CPU")
    parser.add_argument("--seconds", type=float, default=2.0, help="per grid point")
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import torch

    report: dict = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                    "torch": torch.__version__}
    demo = REPO / "model_artifacts" / "demo" / "roberta"
    shape = "tiny" if args.quick else "base"
    model_dir = random_roberta(shape, demo, Path(tempfile.gettempdir()) / f"gpu-bench-{shape}")
    batches, lengths = ((1, 8), (64,)) if args.quick else (BATCHES, LENGTHS)
    seconds = 0.3 if args.quick else args.seconds
    dtypes = ("fp32",) if not args.device.startswith("cuda") else ("fp32", "fp16", "bf16")
    report["offline"] = torch_grid(model_dir, args.device, dtypes, seconds, batches, lengths)
    report["offline"].update(onnx_grid(model_dir, args.device, seconds, batches, lengths))
    args.out.write_text(json.dumps(report, indent=2))
    best = "fp16" if args.device.startswith("cuda") else "fp32"
    report["server"] = served(model_dir, args.device, ["--torch-dtype", best], 5 if args.quick else 30,
                              8 if args.quick else 64)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["server"]), f"total {report['seconds']} s")


if __name__ == "__main__":
    main()
