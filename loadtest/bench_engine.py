"""One engine's host CPU per request: how many requests a second one engine process can take before its own Python
is the limit, whatever the accelerator. An engine (serving.engine.endpoint, the simulated backend: each forward
waits fixed + per-token x padded tokens on the device and costs no host CPU) serves a raw front end in the same
process that sends K single-text requests per write and waits for their answers; the engine's threads' CPU time is
read with psutil. Prints a table; no HTTP involved.

    .venv/bin/python -m loadtest.bench_engine [--per-write 1 4 16 64] [--fixed-ms 0.5] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import psutil

from loadtest.bench_server import text_mix
from serving.board import Board, EngineState, socket_address
from serving.channel import Frames, ScoreRequest, frame, pack, unpack
from serving.config import Settings
from serving.engine.endpoint import Endpoint
from serving.engine.main import load_service
from serving.engine.models import EngineModels

REPO = Path(__file__).resolve().parent.parent


def threads_cpu_s(skip: int) -> float:
    """CPU seconds of this process's threads but `skip` (the sending thread)."""
    return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id != skip)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-write", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--fixed-ms", type=float, default=0.5)
    parser.add_argument("--per-token-us", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="per row")
    args = parser.parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="toxserve-bench-engine-"))
    board = Board.create(run_dir, 1)
    board.write(0, pid=os.getpid(), state=EngineState.STARTING)
    settings = Settings(backend="sim", model_dir=str(REPO / "model_artifacts" / "demo" / "roberta"),
                        sim_fixed_ms=args.fixed_ms, sim_per_token_us=args.per_token_us)
    service = load_service(settings, 0, "cpu", 1)
    models = EngineModels(settings, "cpu", load_service=None)
    models.add("", service)
    endpoint = Endpoint(models, socket_address(run_dir, 0), board, 0, drain_s=10)
    serving = threading.Thread(target=endpoint.serve, daemon=True)
    serving.start()
    board.write(0, state=EngineState.READY)
    encoded = [service.classifier.encode([text])[0] for text in text_mix(500)]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_address(run_dir, 0))
    frames, ids, me = Frames(), iter(range(1, 1 << 62)), threading.get_native_id()

    def round_trip(count: int) -> None:
        messages = []
        for _ in range(count):
            request_id = next(ids)
            text = encoded[request_id % len(encoded)]
            messages.append(frame(pack(ScoreRequest(request_id, os.getpid(), time.monotonic() + 30, [text.features],
                                                    [text.length]))))
        sock.sendall(b"".join(messages))
        answered = 0
        while answered < count:
            for payload in frames.feed(sock.recv(1 << 20)):
                reply = unpack(payload)
                if reply.error_kind:
                    raise RuntimeError(f"{reply.error_kind}: {reply.error_message}")
                answered += 1

    print(f"engine on a simulated device ({args.fixed_ms} ms + {args.per_token_us} us per padded token), "
          f"{os.cpu_count()} cores")
    print("| requests per write | requests/s | engine CPU us per request | ceiling req/s (one core) |")
    print("|---|---|---|---|")
    for count in args.per_write:
        for _ in range(20):  # warm
            round_trip(count)
        done, cpu, started = 0, threads_cpu_s(me), time.monotonic()
        while time.monotonic() - started < args.seconds:
            round_trip(count)
            done += count
        seconds, cpu_us = time.monotonic() - started, 1e6 * (threads_cpu_s(me) - cpu) / done
        print(f"| {count} | {done / seconds:,.0f} | {cpu_us:.1f} | {1e6 / cpu_us:,.0f} |", flush=True)
    sock.close()
    endpoint.stop()
    serving.join(15)


if __name__ == "__main__":
    main()
