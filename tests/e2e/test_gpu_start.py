"""`serve` on a host that claims GPUs, on this CPU: torch is made to report CUDA devices and to record every
process that asks the CUDA runtime anything. The process that forks the workers must never be among them
(a master that initialised CUDA leaves every forked worker unable to use it), and each worker is pinned to
its GPU by the host's own name for it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import SERVE, free_port

FAKE_CUDA = '''
import json, os, types
import torch

GPUS = json.loads(os.environ["FAKE_CUDA_GPUS"])


def recorded(name, answer):
    def call(*args, **kwargs):
        with open(os.environ["FAKE_CUDA_LOG"], "a") as log:
            log.write(f"{os.getpid()} {name}\\n")
        return answer(*args, **kwargs) if callable(answer) else answer
    return call


def properties(index=0):
    gpu = GPUS[index if isinstance(index, int) else 0]
    return types.SimpleNamespace(name=gpu["name"], major=gpu["capability"][0], minor=gpu["capability"][1],
                                 total_memory=gpu["memory_bytes"])


torch.backends.cuda.is_built = lambda: True
torch.cuda.is_available = recorded("is_available", True)
torch.cuda.device_count = recorded("device_count", len(GPUS))
torch.cuda.init = recorded("init", None)
torch.cuda._lazy_init = recorded("_lazy_init", None)
torch.cuda.get_device_properties = recorded("get_device_properties", properties)
torch.cuda.get_device_capability = recorded("get_device_capability",
                                            lambda i=0: (properties(i).major, properties(i).minor))
torch.cuda.get_device_name = recorded("get_device_name", lambda i=0: properties(i).name)
'''
H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": [9, 0], "memory_bytes": 80 * 2**30}
T4 = {"name": "Tesla T4", "capability": [7, 5], "memory_bytes": 15 * 2**30}


def start(tmp_path: Path, gpus: list[dict], *args: str, visible: str | None = None) -> tuple[subprocess.Popen, int]:
    (tmp_path / "fake").mkdir(exist_ok=True)
    (tmp_path / "fake" / "sitecustomize.py").write_text(FAKE_CUDA)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'fake'}:{os.environ.get('PYTHONPATH', '')}",
           "FAKE_CUDA_GPUS": json.dumps(gpus), "FAKE_CUDA_LOG": str(tmp_path / "cuda-calls.log"),
           "SAGEMAKER_BIND_TO_PORT": str(port), "SERVING_HOST": "127.0.0.1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    log = (tmp_path / "serve.log").open("w")
    return subprocess.Popen([SERVE, *args], env=env, stdout=log, stderr=subprocess.STDOUT), port


def callers(tmp_path: Path) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    path = tmp_path / "cuda-calls.log"
    for line in path.read_text().splitlines() if path.exists() else []:
        pid, name = line.split()
        found.setdefault(int(pid), set()).add(name)
    return found


def wait_for_ping(port: int, process: subprocess.Popen, log: Path) -> requests.Response:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{port}/ping", timeout=2)
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)
    raise AssertionError(f"no /ping answer:\n{log.read_text()}")


@pytest.mark.parametrize("layout", ["engines", "workers"])
@pytest.mark.parametrize("visible, device, pinned", [
    (None, "auto", ["0", "1"]),
    ("GPU-8a1f-aaaa,GPU-3c2e-bbbb", "cuda:1", ["GPU-3c2e-bbbb"]),
])
def test_the_forking_process_never_touches_cuda_and_workers_get_their_gpu(demo_dir, tmp_path, visible, device,
                                                                          pinned, layout):
    """Layout engines (the default on GPUs): the supervisor, which forks the front ends, never asks CUDA
    anything, nor do the front ends; each engine is pinned to its GPU. Layout workers: the same for the gunicorn
    master and its workers."""
    args = ["--model-dir", str(demo_dir / "rnn"), "--device", device]
    process, port = start(tmp_path, [H100, H100], *args, *(["--layout", "workers"] if layout == "workers" else []),
                          visible=visible)
    log = tmp_path / "serve.log"
    try:
        ping = wait_for_ping(port, process, log)
        deadline = time.monotonic() + 120
        while "model is loading" in ping.text and time.monotonic() < deadline:  # front ends answer while engines load
            time.sleep(0.2)
            ping = wait_for_ping(port, process, log)
        asked = callers(tmp_path)
        assert asked, "the fake CUDA recorded nothing: the GPU probe did not run"
        assert process.pid not in asked, f"the master called {asked[process.pid]}:\n{log.read_text()}"
        deadline = time.monotonic() + 60
        while log.read_text().count(" pinned: ") < len(pinned) and time.monotonic() < deadline:
            time.sleep(0.2)  # the other worker may still be starting
        text = log.read_text()
        if layout == "workers":
            assert f"layout: {len(pinned)} worker(s) over {len(pinned)} GPU(s)" in text, text
            workers = sorted(re.findall(r"worker \d+ pinned: CUDA_VISIBLE_DEVICES=(\S+) ", text))
            assert workers == sorted(pinned), text
        else:
            assert f"feeding {len(pinned)} engine(s), one per GPU ({len(pinned)})" in text, text
            engines = dict(re.findall(r"engine \d+ \(pid (\d+)\) pinned: CUDA_VISIBLE_DEVICES=(\S+) ", text))
            assert sorted(engines.values()) == sorted(pinned), text
            deadline = time.monotonic() + 60
            while not {int(pid) for pid in engines} <= set(asked) and time.monotonic() < deadline:
                time.sleep(0.2)  # the other engine may still be loading
                asked = callers(tmp_path)
            assert {int(pid) for pid in engines} <= set(asked), f"an engine never probed CUDA: {asked}"
            assert process.pid not in asked, asked
            frontends = [int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", text)]
            assert frontends and not set(frontends) & set(asked), f"a front end asked CUDA: {asked}\n{text}"
        # This CPU torch cannot move a model to CUDA: each worker says so on /ping, it does not hang or crash.
        assert ping.status_code == 503 and "model failed to load" in ping.json()["error"]["message"]
    finally:
        process.terminate()
        assert process.wait(40) == 0, log.read_text()


def test_bf16_on_a_gpu_without_it_is_refused_at_start_naming_the_gpu(demo_dir, tmp_path):
    process, _ = start(tmp_path, [T4], "--model-dir", str(demo_dir / "roberta"), "--torch-dtype", "bf16")
    assert process.wait(120) != 0
    text = (tmp_path / "serve.log").read_text()
    assert "bf16 needs compute capability 8.0" in text and "Tesla T4" in text, text


def test_cuda_asked_for_on_a_host_without_gpus_is_a_clear_error(demo_dir, tmp_path):
    process, _ = start(tmp_path, [], "--model-dir", str(demo_dir / "rnn"), "--device", "cuda")
    assert process.wait(120) != 0
    text = (tmp_path / "serve.log").read_text()
    # The message names the torch and CUDA build the probe child saw (the fake imports torch everywhere, so this
    # test cannot tell whether serve's own process imports it: tests/e2e/test_engine_layout.py does).
    assert "no CUDA GPU is visible" in text and re.search(r"torch \d+\.\d+\S*, CUDA build \S+:", text), text
