"""Start the real `serve` entrypoint (gunicorn + Flask) on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

SERVE = str(Path(sys.executable).parent / "serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process, self.port, self.log_path = process, port, log_path
        self.url = f"http://127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self, shows: Callable[[str], bool], timeout_s: float = 5.0) -> str:
        """/metrics once `shows` holds for it, or when `timeout_s` has passed: other processes' counts reach the
        page within serving.metrics.FLUSH_S."""
        deadline = time.monotonic() + timeout_s
        while True:
            page = requests.get(self.url + "/metrics", timeout=10).text
            if shows(page) or time.monotonic() > deadline:
                return page
            time.sleep(0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(40)


@contextlib.contextmanager
def running_server(tmp_path: Path, *args: str, env: dict | None = None, ready_timeout_s: float = 90):
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    environment = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "SERVING_HOST": "127.0.0.1", **(env or {})}
    with log_path.open("w") as log:
        process = subprocess.Popen([SERVE, *args], env=environment, stdout=log, stderr=subprocess.STDOUT)
    server = RunningServer(process, port, log_path)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited with {process.returncode}:\n{server.log()}")
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):  # queued while workers load
                if requests.get(server.url + "/ping", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"serve not ready after {ready_timeout_s} s:\n{server.log()}")
        yield server
    finally:
        server.stop()


def sigterm_under_load(server: RunningServer, texts_of, clients: int = 48,
                       path: str = "/invocations") -> tuple[int, float, list]:
    """`clients` threads each post texts_of(i) to `path`; SIGTERM goes to `serve` once they are under way. Returns
    serve's exit code, how long it took to exit, and per client ("answered", status, predictions) or ("refused",
    error, 0)."""
    import threading

    results: list = []

    def send(i: int) -> None:
        try:
            response = requests.post(server.url + path, json={"inputs": texts_of(i)}, timeout=60)
            results.append(("answered", response.status_code, len(response.json().get("predictions", []))))
        except requests.ConnectionError as exc:  # not accepted before the drain began
            results.append(("refused", str(exc), 0))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    started = time.monotonic()
    code = server.stop()
    took = time.monotonic() - started
    for t in threads:
        t.join(60)
    return code, took, results


@pytest.fixture(scope="module", params=["roberta", "rnn", "roberta-engines", "rnn-engines"])
def server(request, demo_dir, tmp_path_factory):
    """Both demo models in the CPU default layout (workers), and in layout engines (front ends feeding an engine
    that runs the real model on the CPU): every contract test runs against both layouts."""
    family, _, layout = request.param.partition("-")
    extra = ["--layout", layout] if layout else []
    with running_server(tmp_path_factory.mktemp("serve"), "--model-dir", str(demo_dir / family), *extra) as s:
        s.family = family
        s.layout = layout or "workers"
        yield s
