"""ONNX benchmark: torch fp32 vs ONNX Runtime fp32 vs int8, offline (batch 1 and 32) and served (concurrency 32).

Models: a random-weight RoBERTox of roberta-base shape with the demo tokenizer, and the demo RNN;
the same text mix and load generator as bench_server.py, all in one run.

    python loadtest/bench_onnx.py [--models base,rnn] [--duration 20] [--out bench_onnx.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadtest.bench_server import closed_loop_levels, offline, random_roberta, text_mix  # noqa: E402

CONFIGS = (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"))


def ensure_onnx(model_dir: Path, texts: list[str]) -> None:
    from serving.tools.export import export

    if not all((model_dir / "onnx" / f"model.{v}.onnx").exists() for v in ("fp32", "int8")):
        export(model_dir, ["fp32", "int8"], texts[:64], force=True)  # random weights: speed, not quality


def served_c32(model_dir: Path, texts: list[str], backend: str, variant: str, duration: float, work: Path) -> dict:
    extra = ["--max-length", "128", "--backend", backend, "--onnx-variant", variant]
    return closed_loop_levels(model_dir, texts, extra, (32,), duration, work / f"serve-{backend}-{variant}.log")[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="base,rnn")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("bench_onnx.json"))
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "toxserve-bench")
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    demo = REPO / "model_artifacts" / "demo"
    texts = text_mix(2000)
    report: dict = {"conditions": {"duration_s": args.duration, "max_length": 128, "server": "serve defaults",
                                   "texts": "one per request, log-normal mix, median 40 words"}, "models": {}}
    for name in args.models.split(","):
        model_dir = demo / "rnn" if name == "rnn" else random_roberta(name, demo / "roberta", args.work_dir / name)
        ensure_onnx(model_dir, texts)
        rows = {}
        for backend, variant in CONFIGS:
            label = f"{backend} {variant}"
            rows[label] = {"offline": offline(model_dir, 128, args.duration, backend, variant)}
            rows[label]["server_c32"] = served_c32(model_dir, texts, backend, variant, args.duration, args.work_dir)
            print(name, label, rows[label], flush=True)
        report["models"][name] = rows
        args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = []
    for name, rows in report["models"].items():
        base = rows["torch fp32"]["server_c32"]["req_per_s"]
        lines += [f"### {name}", "", "| runtime | offline batch 1 seq/s | offline batch 32 seq/s | server c=32 req/s | "
                  "vs torch fp32 served | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
        for label, r in rows.items():
            s = r["server_c32"]
            lines.append(f"| {label} | {r['offline']['batch1_seq_per_s']} | {r['offline']['batch32_seq_per_s']} | "
                         f"{s['req_per_s']} | {s['req_per_s'] / base:.2f}x | {s['p50_ms']} | {s['p99_ms']} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
