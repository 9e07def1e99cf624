"""The real `serve` recovers from a device that fails for good: a CUDA error is injected into ONNX Runtime's
forward (the demo LSTM's backend) while a marker file exists; the worker that meets it answers 503, exits, and
gunicorn's replacement serves again, with nothing sent but the requests below."""

from __future__ import annotations

import time

import pytest
import requests

from tests.e2e.conftest import running_server

FAULT = '''
import os
from onnxruntime.capi.onnxruntime_inference_collection import InferenceSession
from onnxruntime.capi.onnxruntime_pybind11_state import Fail

real_run = InferenceSession.run


def run(self, *args, **kwargs):
    if os.path.exists(os.environ["FAULT_MARKER"]):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 700: an illegal memory access was encountered")
    return real_run(self, *args, **kwargs)


InferenceSession.run = run
'''


@pytest.mark.parametrize("model, layout", [("rnn", "workers"), ("rnn.model.tar.gz", "workers"),
                                           ("rnn.model.tar.gz", "engines")])
def test_a_worker_whose_device_failed_is_replaced_and_the_endpoint_recovers(demo_dir, tmp_path, model, layout):
    """Also from a model.tar.gz: the worker that exits must not delete the extracted folder its successor loads.
    In layout engines the engine that met the error drains and exits, and the supervisor starts a fresh one."""
    (tmp_path / "fault").mkdir()
    (tmp_path / "fault" / "sitecustomize.py").write_text(FAULT)
    marker = tmp_path / "device-broken"
    env = {"PYTHONPATH": str(tmp_path / "fault"), "FAULT_MARKER": str(marker)}
    with running_server(tmp_path, "--model-dir", str(demo_dir / model), "--workers", "1", "--layout", layout,
                        env=env) as server:
        assert requests.post(server.url + "/invocations", json=["hello"], timeout=30).status_code == 200
        marker.touch()
        failed = requests.post(server.url + "/invocations", json=["hello"], timeout=30)
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "device_failed"
        marker.unlink()  # a fresh process gets a fresh device
        statuses, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                statuses.append(requests.post(server.url + "/invocations", json=["hello"], timeout=30).status_code)
            except requests.ConnectionError:
                statuses.append(0)
            if statuses[-3:] == [200, 200, 200]:
                break
            time.sleep(0.2)
        log = server.log()
        assert statuses[-3:] == [200, 200, 200], (statuses, log)
        assert set(statuses) <= {200, 503, 0}, statuses  # while replaced: 503 or a refused connection, never 500
        if layout == "workers":
            assert "exits so that gunicorn replaces it" in log and log.count("Booting worker") >= 2, log
        else:
            assert "engine 0 draining" in log and log.count("engine 0 ready") >= 2, log
        metrics = server.metrics(lambda page: "toxserve_device_failures_total 1.0" in page)
        assert "toxserve_device_failures_total 1.0" in metrics, metrics
