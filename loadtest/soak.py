"""Soak: the real `serve` under moderate, mixed load for a fixed time; resident memory growth and errors.

Senders post a mix (one text, ten, a 200-text batch, a long text, a malformed body that must get 400) with a
short pause between requests. The workers' RSS is sampled every few seconds; growth is measured from the
end of the first fifth of the run (after warm-up) to the end. Prints JSON; exits 1 past the goals
(growth >= 10%, any unexpected status).

    .venv/bin/python loadtest/soak.py --minutes 30 --model model_artifacts/demo/rnn.model.tar.gz
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loadtest.bench_memory import children, rollup  # noqa: E402
from loadtest.bench_server import serve, text_mix  # noqa: E402


def request_mix(rng: random.Random, texts: list[str]) -> tuple[dict, int]:
    """(keyword arguments for requests.post, the status it must get)."""
    kind = rng.random()
    if kind < 0.55:
        return {"json": {"inputs": [rng.choice(texts)]}}, 200
    if kind < 0.8:
        return {"json": {"inputs": rng.sample(texts, 10)}}, 200
    if kind < 0.88:
        return {"json": {"inputs": rng.sample(texts, 200)}}, 200
    if kind < 0.95:
        return {"json": {"inputs": [" ".join(rng.sample(texts, 40))]}}, 200
    return {"data": b'{"inputs": [', "headers": {"Content-Type": "application/json"}}, 400


def workers_rss_mb(master: int) -> float:
    return sum(rollup(pid)["Rss"] for pid in children(master)) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--model", type=Path, default=REPO / "model_artifacts" / "demo" / "rnn.model.tar.gz")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--pause-ms", type=float, default=20.0, help="between a sender's requests")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = serve(args.model, port, [], Path("/tmp/soak-serve.log"))
    url = f"http://127.0.0.1:{port}/invocations"
    texts = text_mix(500)
    duration = args.minutes * 60
    stop = threading.Event()
    counts: dict[str, int] = {"requests": 0, "unexpected": 0}
    unexpected: list[str] = []
    lock = threading.Lock()

    def send(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            while not stop.is_set():
                kwargs, wanted = request_mix(rng, texts)
                try:
                    status = session.post(url, timeout=60, **kwargs).status_code
                except requests.RequestException as exc:
                    status, wanted = -1, 0
                    unexpected.append(type(exc).__name__)
                with lock:
                    counts["requests"] += 1
                    if status != wanted:
                        counts["unexpected"] += 1
                        unexpected.append(str(status))
                stop.wait(args.pause_ms / 1000)

    senders = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(args.senders)]
    started = time.monotonic()
    for sender in senders:
        sender.start()
    samples: list[tuple[float, float]] = []
    try:
        while time.monotonic() - started < duration:
            samples.append((round(time.monotonic() - started, 1), round(workers_rss_mb(process.pid), 1)))
            time.sleep(min(5.0, duration / 20))
    finally:
        stop.set()
        for sender in senders:
            sender.join(60)
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(60)
    warm = [rss for t, rss in samples if t >= duration / 5] or [samples[-1][1]]
    growth = (samples[-1][1] - warm[0]) / warm[0]
    report = {"minutes": args.minutes, "model": str(args.model), "senders": args.senders, **counts,
              "req_per_s": round(counts["requests"] / (time.monotonic() - started), 1),
              "rss_mb_after_warmup": warm[0], "rss_mb_end": samples[-1][1], "rss_growth": round(growth, 4),
              "rss_mb_peak": max(rss for _, rss in samples), "serve_exit_code": exit_code,
              "unexpected_statuses": sorted(set(unexpected))[:10], "samples": samples}
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if counts["unexpected"] == 0 and growth < 0.10 and exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
