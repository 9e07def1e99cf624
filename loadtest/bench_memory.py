"""Resident memory of `serve` on the demo LSTM with 1, 2 and 4 workers: each process's RSS and PSS (shared pages
split among the processes that map them), and what the fastText matrix costs. Prints a table and JSON.

    .venv/bin/python loadtest/bench_memory.py [--workers 1,2,4] [--backend torch]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadtest.bench_server import serve  # noqa: E402


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def rollup(pid: int) -> dict[str, int]:
    """kB figures from /proc/PID/smaps_rollup."""
    figures = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        figures[key] = int(value.split()[0])
    return figures


def mapping_kb(pid: int, name: str) -> dict[str, int]:
    """Rss and Pss (kB) of the mappings of files whose path ends with `name` (the cached fastText matrix)."""
    totals = {"Rss": 0, "Pss": 0}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and not line.endswith(" kB"):
            inside = line.rstrip().endswith(name)
        elif inside and line.split(":")[0] in totals:
            totals[line.split(":")[0]] += int(line.split()[1])
    return totals


def measure(workers: int, backend: str, port: int) -> dict:
    model = REPO / "model_artifacts" / "demo" / "rnn"
    log = Path(f"/tmp/bench-memory-{workers}.log")
    process = serve(model, port, ["--workers", str(workers), "--backend", backend], log)
    try:
        for _ in range(50):  # every worker has answered a few requests
            requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": ["u r an idiot", "nice map"]},
                          timeout=30).raise_for_status()
        time.sleep(1)
        pids = children(process.pid)
        per = {pid: rollup(pid) for pid in pids}
        matrix = {pid: mapping_kb(pid, "matrix.npy") for pid in pids}
        return {
            "workers": workers, "backend": backend,
            "master_rss_mb": round(rollup(process.pid)["Rss"] / 1024, 1),
            "worker_rss_mb": [round(f["Rss"] / 1024, 1) for f in per.values()],
            "workers_pss_total_mb": round(sum(f["Pss"] for f in per.values()) / 1024, 1),
            "matrix_rss_mb_per_worker": [round(m["Rss"] / 1024, 1) for m in matrix.values()],
            "matrix_pss_total_mb": round(sum(m["Pss"] for m in matrix.values()) / 1024, 1),
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx", "auto"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = [measure(int(w), args.backend, 18700 + os.getpid() % 200) for w in args.workers.split(",")]
    for row in rows:
        print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
