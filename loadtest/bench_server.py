"""Server benchmark: offline limit vs the batching server vs a per-request baseline, in one run.

For each model (random-weight RoBERTox of roberta-base shape, a tiny one, both with the demo
tokenizer, and the demo RNN): the offline throughput with no server (length-sorted batches of
32, and batch 1), then the real `serve` with dynamic batching, then the same server with
`--batching none` (one forward per request in its thread), each at concurrency 1, 8 and 32
with one text per request from a log-normal length mix (median 40 words). Each model gets an
fp32 ONNX export, so `--backend auto` (serve's default) runs it on ONNX Runtime on a CPU; the
offline limit is measured with the same backend as the servers.

    python loadtest/bench_server.py [--models tiny,base,rnn] [--backend auto] [--duration 15] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadtest.closed_loop import run_closed_loop  # noqa: E402
from serving.artifacts import choose_backend  # noqa: E402
from serving.corpus import read_labelled  # noqa: E402

SHAPES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def text_mix(count: int, seed: int = 0, median_words: int = 40) -> list[str]:
    """Texts with a log-normal word count (median 40), words drawn from the demo corpus."""
    texts, _ = read_labelled(REPO / "model_artifacts" / "data" / "comments.csv")
    vocabulary = " ".join(texts).split()
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median_words), 0.8, count), 1, 400).astype(int)
    return [" ".join(rng.choice(vocabulary, n)) for n in lengths]


def random_roberta(shape: str, demo_roberta: Path, out: Path) -> Path:
    """A random-weight RoBERTox of the given shape with the demo tokenizer (ids stay under its vocab)."""
    import torch
    from transformers import RobertaConfig

    from serving.models.roberta import RoBERToxForSequenceClassification

    if (out / "config.json").exists():
        return out
    labels = json.loads((demo_roberta / "config.json").read_text())["id2label"]
    config = RobertaConfig(vocab_size=50265, max_position_embeddings=514, pad_token_id=1, type_vocab_size=1,
                           id2label={int(k): v for k, v in labels.items()}, architectures=[
                               "RoBERToxForSequenceClassification"], problem_type="multi_label_classification",
                           **SHAPES[shape])
    torch.manual_seed(0)
    RoBERToxForSequenceClassification(config).save_pretrained(out)
    shutil.copy(demo_roberta / "tokenizer.json", out / "tokenizer.json")
    return out


def ensure_fp32_export(model_dir: Path, texts: list[str]) -> None:
    """A current fp32 ONNX export, which `--backend auto` serves on CPUs (random weights pass fp32 parity too)."""
    from serving.models.onnx_runtime import stale_export_reason
    from serving.tools.export import export

    if stale_export_reason(model_dir, "fp32") is not None:
        export(model_dir, ["fp32"], texts[:64])


def offline(model_dir: Path, max_length: int, seconds: float, backend: str = "auto", variant: str = "fp32") -> dict:
    """Measured in a child process, so its torch threads and memory are gone before the server starts."""
    result = subprocess.run([sys.executable, __file__, "--offline", str(model_dir), "--max-length", str(max_length),
                             "--duration", str(seconds), "--backend", backend, "--variant", variant],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def offline_in_process(model_dir: Path, texts: list[str], max_length: int, seconds: float, backend: str = "auto",
                       variant: str = "fp32") -> dict:
    """The limit: batched (length-sorted, 32) and batch-1 throughput, all cores, no server."""
    import torch

    from serving.artifacts import load_classifier

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    classifier = load_classifier(model_dir, max_length=max_length, backend=backend, variant=variant, threads=cores)
    classifier.predict(texts[:64])  # warm-up
    figures = {}
    for batch_size in (32, 1):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            chunk = texts[done % len(texts): done % len(texts) + 256]
            classifier.predict(chunk, batch_size=batch_size)
            done += len(chunk)
        figures[f"batch{batch_size}_seq_per_s"] = round(done / (time.perf_counter() - started), 2)
    return figures


def serve(model_dir: Path, port: int, extra: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    script = Path(sys.executable).parent / "serve"
    entry = [str(script)] if script.exists() else [sys.executable, "-m", "serving.cli", "serve"]  # not installed
    command = [*entry, "--model-dir", str(model_dir), "--host", "127.0.0.1", "--port", str(port), *extra]
    process = subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env)
    return wait_ready(process, port, log_path)


def wait_ready(process: subprocess.Popen, port: int, log_path: Path, timeout_s: float = 300) -> subprocess.Popen:
    """The process once its /ping answers 200; killed, with its log's tail raised, if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return process
        except (requests.ConnectionError, requests.Timeout):  # workers still loading: the backlog holds it
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"server did not start: {log_path.read_text()[-2000:]}")


def closed_loop_levels(model_dir: Path, texts: list[str], extra: list[str], levels, duration: float,
                       log_path: Path) -> list[dict]:
    """Start `serve`, warm it for 2 s, run the closed loop at each concurrency level, stop it with SIGTERM."""
    port = 18500 + os.getpid() % 1000
    process = serve(model_dir, port, extra, log_path)
    try:
        url = f"http://127.0.0.1:{port}"
        run_closed_loop(url, texts, 4, 2.0)  # warm connections and caches
        rows = []
        for concurrency in levels:
            rows.append(run_closed_loop(url, texts, concurrency, duration).summary())
            print("   ", rows[-1], flush=True)
        return rows
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def server_figures(model_dir: Path, texts: list[str], extra: list[str], duration: float, work: Path) -> list:
    return closed_loop_levels(model_dir, texts, extra, (1, 8, 16, 32), duration, work / "serve.log")


def markdown(report: dict) -> str:
    """Tables for BENCHMARKS.md: each server row with its share of the offline batched limit."""
    lines = []
    for name, figures in report["models"].items():
        limit, single = figures["offline"]["batch32_seq_per_s"], figures["offline"]["batch1_seq_per_s"]
        lines += [f"### {name} ({figures.get('backend', 'torch')})", "",
                  f"Offline limit (no server): {limit} seq/s at batch 32 (length-sorted), {single} seq/s at batch 1 "
                  f"({1000 / single:.2f} ms per text).", "",
                  "| server | concurrency | req/s | share of limit | p50 ms | p99 ms | errors | generator CPU ms/req |",
                  "|---|---|---|---|---|---|---|---|"]
        for mode in ("batching", "per_request"):
            for row in figures[mode]:
                lines.append(f"| {mode.replace('_', '-')} | {row['concurrency']} | {row['req_per_s']} | "
                             f"{row['req_per_s'] / limit:.0%} | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} | "
                             f"{row['client_cpu_ms_per_req']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,base,rnn")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per concurrency level")
    parser.add_argument("--max-length", type=int, default=128, help="truncation, tokens")
    parser.add_argument("--server-args", default="", help="extra `serve` flags for the batching server")
    parser.add_argument("--out", type=Path, default=Path("bench_server.json"))
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "toxserve-bench")
    parser.add_argument("--offline", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                        help="the backend of the servers and of the offline limit (auto: as `serve` picks)")
    parser.add_argument("--variant", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--markdown", type=Path, help="print the tables for a saved report and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return
    if args.offline:
        print(json.dumps(offline_in_process(args.offline, text_mix(2000), args.max_length, args.duration,
                                            args.backend, args.variant)))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    demo = REPO / "model_artifacts" / "demo"
    texts = text_mix(2000)
    report = {"conditions": {
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "python": platform.python_version(), "texts": "one per request, log-normal mix, median 40 words",
        "max_length": args.max_length, "duration_s_per_level": args.duration, "server_args": args.server_args,
    }, "models": {}}
    for name in args.models.split(","):
        model_dir = demo / "rnn" if name == "rnn" else random_roberta(name, demo / "roberta", args.work_dir / name)
        ensure_fp32_export(model_dir, texts)
        backend = choose_backend(model_dir, "cpu")[0] if args.backend == "auto" else args.backend
        print(f"== {name} ({backend})", flush=True)
        figures = {"backend": backend, "offline": offline(model_dir, args.max_length, args.duration, backend)}
        print("    offline", figures["offline"], flush=True)
        common = ["--max-length", str(args.max_length), "--backend", backend]
        print("  batching server", flush=True)
        figures["batching"] = server_figures(model_dir, texts, common + args.server_args.split(), args.duration,
                                             args.work_dir)
        print("  per-request baseline", flush=True)
        figures["per_request"] = server_figures(model_dir, texts, common + ["--batching", "none"], args.duration,
                                                args.work_dir)
        report["models"][name] = figures
        args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
