"""A multi-model endpoint against a single-model one under the same traffic: what spreading requests over models
costs (each model has its own batcher, so a forward batches one model's texts only).

`serve` with SAGEMAKER_MULTI_MODEL=true and four copies of the demo RoBERTa loaded as four models; single-text
requests from the log-normal length mix (median 40 words), closed loop on loopback. Traffic: all to one model (the
baseline), then spread 70/20/5/5 over the four; and, for what multi-model mode itself costs, a single-model
`serve` (layout engines) of the same folder under the same traffic. Backends: simulated accelerators (`--backend
sim`: the real tokeniser, channel and batchers, a forward that waits 0.5 ms + 2 us per padded token, as a GPU
endpoint looks to its host) and the real model on this CPU. Per row: req/s, p50, p99, errors, server CPU per
request.

    python loadtest/bench_multimodel.py [--duration 10] [--concurrency 1,64] [--out bench_multimodel.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadtest.bench_server import text_mix, wait_ready  # noqa: E402
from loadtest.bench_sim import server_cpu_s  # noqa: E402
from loadtest.closed_loop import run_closed_loop  # noqa: E402

MODELS = {"rob-a": 70, "rob-b": 20, "rob-c": 5, "rob-d": 5}


def start(root: Path, port: int, flags: list[str], log_path: Path, multi_model: bool = True) -> subprocess.Popen:
    env = {**os.environ, "SAGEMAKER_MULTI_MODEL": "true", "SERVING_MODELS_ROOT": str(root)}
    if not multi_model:
        env.pop("SAGEMAKER_MULTI_MODEL")
        flags = [*flags, "--model-dir", str(root / "roberta"), "--layout", "engines"]
    command = [str(Path(sys.executable).parent / "serve"), "--host", "127.0.0.1", "--port", str(port), *flags]
    process = subprocess.Popen(command, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    process = wait_ready(process, port, log_path)
    for name in MODELS if multi_model else ():
        loaded = requests.post(f"http://127.0.0.1:{port}/models", json={"model_name": name, "url": "roberta"},
                               timeout=300)
        loaded.raise_for_status()
    return process


def traffic(texts: list[str], spread: bool, seed: int = 0) -> list[str]:
    """Each text's model: all rob-a, or drawn 70/20/5/5."""
    if not spread:
        return ["/models/rob-a/invoke"] * len(texts)
    rng = random.Random(seed)
    names = rng.choices(list(MODELS), weights=list(MODELS.values()), k=len(texts))
    return [f"/models/{name}/invoke" for name in names]


def measure(url: str, pid: int, texts: list[str], paths: list[str], concurrency: int, duration: float) -> dict:
    before = server_cpu_s(pid)
    result = run_closed_loop(url, texts, concurrency, duration, paths=paths)
    row = result.summary()
    row["server_cpu_ms_per_req"] = round(1000 * (server_cpu_s(pid) - before) / max(1, result.requests), 3)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per row")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--backends", default="sim,cpu", help="sim (simulated accelerator) and/or cpu (real model)")
    parser.add_argument("--out", type=Path, default=Path("bench_multimodel.json"))
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    texts = text_mix(2000)
    work = Path(tempfile.mkdtemp(prefix="toxserve-bench-mme-"))
    root = work / "models"
    shutil.copytree(REPO / "model_artifacts" / "demo" / "roberta", root / "roberta")
    report: dict = {"conditions": {"duration_s": args.duration, "cores": os.cpu_count(),
                                   "cpu": platform.processor() or platform.machine(),
                                   "python": platform.python_version(), "models": MODELS}, "rows": []}
    port = 18900 + os.getpid() % 500
    url = f"http://127.0.0.1:{port}"
    for backend in args.backends.split(","):
        flags = ["--backend", "sim"] if backend == "sim" else []
        process = start(root, port, flags, work / f"serve-{backend}-single.log", multi_model=False)
        try:
            run_closed_loop(url, texts, 4, 2.0)
            for concurrency in levels:
                row = measure(url, process.pid, texts, ["/invocations"] * len(texts), concurrency, args.duration)
                row.update(backend=backend, traffic="single-model server")
                report["rows"].append(row)
                print(row, flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        process = start(root, port, flags, work / f"serve-{backend}.log")
        try:
            run_closed_loop(url, texts, 4, 2.0, paths=traffic(texts, True))  # warm every model and connection
            for concurrency in levels:
                for spread in (False, True):
                    row = measure(url, process.pid, texts, traffic(texts, spread), concurrency, args.duration)
                    row.update(backend=backend, traffic="70/20/5/5 over 4 models" if spread else "1 model")
                    report["rows"].append(row)
                    print(row, flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    args.out.write_text(json.dumps(report, indent=2))
    print("| backend | concurrency | traffic | req/s | p50 ms | p99 ms | errors | server CPU ms/req |")
    print("|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        print(f"| {r['backend']} | {r['concurrency']} | {r['traffic']} | {r['req_per_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['errors']} | {r['server_cpu_ms_per_req']} |")


if __name__ == "__main__":
    main()
