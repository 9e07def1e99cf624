"""The full app on WSGI servers: `serve` (gunicorn gthread) against granian, on the simulated accelerator.

Same conditions as loadtest/bench_sim.py (0.5 ms + 2 us per padded token, single-text requests, length mix
with median 40 words, closed loop at c=1 and c=64), 1 and 2 workers. granian is not a dependency: install it
apart and name the folder, e.g.

    pip install --target /tmp/granian granian
    python loadtest/bench_wsgi.py --granian-path /tmp/granian [--duration 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadtest.bench_server import serve, text_mix, wait_ready  # noqa: E402
from loadtest.bench_sim import levels  # noqa: E402


def granian(model_dir: Path, granian_path: Path, port: int, workers: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "loadtest"), str(REPO), str(granian_path)]),
           "SIM_MODEL_DIR": str(model_dir)}
    command = [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--blocking-threads", "64", "--log-level", "warning", "--no-access-log",
               "sim_app:app"]
    process = subprocess.Popen(command, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    return wait_ready(process, port, log_path)


def row(name: str, process: subprocess.Popen, port: int, texts: list[str], duration: float) -> str:
    figures = levels(process, port, texts, duration)
    one, many = figures["c1"], figures["c64"]
    return (f"| {name} | {one['p50_ms']} | {many['req_per_s']} | {many['errors']} | "
            f"{many['server_cpu_ms_per_req']} | {one['server_cpu_ms_per_req']} | {many['client_cpu_ms_per_req']} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--granian-path", type=Path, required=True, help="a folder granian is installed in")
    parser.add_argument("--model-dir", type=Path, default=REPO / "model_artifacts" / "demo" / "roberta")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    args = parser.parse_args(argv)
    texts = text_mix(2000)
    print("| server | c=1 p50 ms | c=64 req/s | c=64 errors | server CPU ms/req (c=64) | (c=1) | client CPU ms/req |")
    print("|---|---|---|---|---|---|---|")
    for workers in (1, 2):
        process = serve(args.model_dir, 18801, ["--backend", "sim", "--sim-devices", str(workers)],
                        args.log_dir / "bench-wsgi-serve.log")
        print(row(f"gunicorn gthread, {workers} worker(s)", process, 18801, texts, args.duration), flush=True)
        process = granian(args.model_dir, args.granian_path, 18802, workers, args.log_dir / "bench-wsgi-granian.log")
        print(row(f"granian wsgi, {workers} worker(s)", process, 18802, texts, args.duration), flush=True)


if __name__ == "__main__":
    main()
