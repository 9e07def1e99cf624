"""A light closed-loop HTTP load generator: N keep-alive connections, each sends its next request on reply.

Plain asyncio streams and HTTP/1.1, no client library, so it costs little CPU on a machine
it shares with the server; its own CPU time is reported beside the figures.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_s: np.ndarray
    client_cpu_s: float

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if len(self.latencies_s) else float("nan")

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency, "requests": self.requests, "errors": self.errors,
            "req_per_s": round(self.throughput, 2), "p50_ms": round(self.percentile_ms(50), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
            "client_cpu_ms_per_req": round(1000 * self.client_cpu_s / max(1, self.requests), 3),
        }


def request_bytes(host: str, path: str, text: str) -> bytes:
    body = json.dumps({"inputs": [text]}).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "content-length")
    await reader.readexactly(length)
    return status


async def _connection(url, payloads, deadline, max_requests, counter, latencies, errors):
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while time.monotonic() < deadline and next(counter) < max_requests:
            started = time.monotonic()
            writer.write(next(payloads))
            status = await _read_response(reader)
            if status == 200:
                latencies.append(time.monotonic() - started)
            else:
                errors.append(status)
    finally:
        writer.close()


async def _run(url: str, texts: list[str], concurrency: int, duration_s: float, max_requests: int,
               paths: list[str] | None) -> LoadResult:
    parts = urlsplit(url)
    encoded = [request_bytes(parts.netloc, path, t) for t, path in zip(texts, paths or ["/invocations"] * len(texts),
                                                                       strict=True)]
    payloads = itertools.cycle(encoded)
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[int] = []
    cpu_started, started = time.process_time(), time.monotonic()
    deadline = started + duration_s
    await asyncio.gather(*(
        _connection(url, payloads, deadline, max_requests, counter, latencies, errors) for _ in range(concurrency)
    ))
    seconds = time.monotonic() - started
    return LoadResult(concurrency, len(latencies), len(errors), seconds, np.array(latencies),
                      time.process_time() - cpu_started)


def run_closed_loop(url: str, texts: list[str], concurrency: int, duration_s: float,
                    max_requests: int = 1_000_000, paths: list[str] | None = None) -> LoadResult:
    """Bounded in time and count; one text per request, cycling through `texts` (each sent to its entry in
    `paths`, a multi-model endpoint's /models/NAME/invoke say; default /invocations)."""
    return asyncio.run(_run(url, texts, concurrency, duration_s, max_requests, paths))
