"""`serve --backend sim`: the real server over HTTP, workers pinned to simulated accelerators as to GPUs."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving.models.simulated import SIM_SCORE
from tests.e2e.conftest import running_server


@pytest.mark.parametrize(("family", "devices", "per_device", "layout"),
                         [("roberta", 2, 1, "workers"), ("rnn", 1, 2, "workers"), ("roberta", 2, 0, "engines"),
                          ("rnn", 1, 0, "auto")])
def test_serve_spreads_workers_over_simulated_devices_and_answers_every_request(demo_dir, tmp_path, family,
                                                                                 devices, per_device, layout):
    """Layout workers pins workers to simulated devices as to GPUs; layout engines (the default with backend sim)
    starts one engine per simulated device, fed by every front end."""
    env = {"SERVING_BACKEND": "sim", "SERVING_SIM_DEVICES": str(devices), "SERVING_SIM_FIXED_MS": "2",
           "SERVING_SIM_PER_TOKEN_US": "5", "SERVING_WORKERS_PER_GPU": str(per_device or 1), "SERVING_LAYOUT": layout}
    with running_server(tmp_path, "--model-dir", str(demo_dir / family), env=env) as server:
        if layout != "workers":  # /ping is 200 once any engine is ready; this test needs every one of them
            deadline = time.monotonic() + 60
            while len(re.findall(r"engine \d ready", server.log())) < devices and time.monotonic() < deadline:
                time.sleep(0.2)
        body = {"inputs": [f"comment number {i}, " + "word " * (i % 40) for i in range(8)]}

        def invoke(_):
            return requests.post(server.url + "/invocations", json=body, timeout=30)

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(invoke, range(64)))
        assert [r.status_code for r in responses] == [200] * 64
        predictions = responses[0].json()["predictions"]
        assert len(predictions) == 8 and all(p["labels"] == [] for p in predictions)
        assert all(score == pytest.approx(SIM_SCORE) for p in predictions for score in p["scores"].values())
        log = server.log()
        if layout == "workers":
            assert f"layout: 2 worker(s) over {devices} simulated accelerator(s)" in log
            pinned = sorted(re.findall(r"pinned to simulated accelerator (\d)", log))
            assert pinned == (["0", "1"] if devices == 2 else ["0", "0"])
        else:
            assert f"feeding {devices} engine(s), simulated" in log, log
            started = sorted(re.findall(r"started on simulated accelerator (\d)", log))
            assert started == [str(i) for i in range(devices)], log
            def received(page: str) -> list[str]:
                counts = re.findall(r'toxserve_engine_texts_received_total\{engine="(\d)"\} (\d+)', page)
                return sorted(engine for engine, count in counts if float(count) > 0)

            assert received(server.metrics(lambda page: received(page) == started)) == started
        assert "GPU(s)" not in log and "CUDA_VISIBLE_DEVICES=" not in log  # no GPU is listed or pinned
