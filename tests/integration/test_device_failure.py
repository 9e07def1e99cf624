"""A CUDA error that poisons the context, injected into a real demo model behind the real batcher and app:
in-flight and queued requests get 503 (not 500), /ping turns 503 with the reason, a metric counts it, and the
worker is asked to go (once)."""

from __future__ import annotations

import threading
import time

import pytest

from serving import load_classifier, metrics
from serving.config import Settings
from serving.frontend.app import create_app
from serving.frontend.handlers import Handler
from serving.service import InferenceService

ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"


class FaultyDevice:
    """The demo classifier, whose forward fails like a GPU whose context is lost once `broken` is set; `gate`
    holds a forward until released, so a request can queue behind it."""

    def __init__(self, classifier) -> None:
        self.classifier = classifier
        self.broken = False
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self.classifier, name)

    @property
    def runs_on_any_thread(self) -> bool:
        return False  # every batch through the loop, so a request can wait behind a running one

    def predict_encoded(self, batch):
        self.entered.set()
        self.gate.wait(10)
        if self.broken:
            raise RuntimeError(ILLEGAL_ACCESS)
        return self.classifier.predict_encoded(batch)


@pytest.fixture
def faulty(demo_dir):
    device = FaultyDevice(load_classifier(demo_dir / "rnn", backend="torch"))
    exits: list[str] = []
    service = InferenceService(device, Settings(), on_device_failure=exits.append)
    client = create_app(Settings(), handler=Handler(service)).test_client()
    yield device, service, client, exits
    device.gate.set()
    service.stop(5)


def failures_counted() -> float:
    return metrics.device_failures._value.get()


def test_a_sticky_cuda_error_answers_503_and_takes_the_worker_out(faulty):
    device, service, client, exits = faulty
    assert client.post("/invocations", json=["hello there"]).status_code == 200
    before = failures_counted()
    device.broken, device.gate = True, threading.Event()
    device.entered.clear()
    answers: dict[str, object] = {}
    running = threading.Thread(target=lambda: answers.update(first=client.post("/invocations", json=["one"])))
    running.start()
    assert device.entered.wait(10)  # the failing batch is on the device
    queued = threading.Thread(target=lambda: answers.update(queued=client.post("/invocations", json=["two", "3"])))
    queued.start()
    deadline = time.monotonic() + 10
    while service.batcher.queued_texts < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert service.batcher.queued_texts == 2
    device.gate.set()  # the device fails; nothing else is sent
    running.join(10)
    queued.join(10)
    for name in ("first", "queued"):
        response = answers[name]
        assert response.status_code == 503, (name, response.get_json())
        assert response.get_json()["error"]["code"] == "device_failed"
        assert "illegal memory access" in response.get_json()["error"]["message"]
    ping = client.get("/ping")
    assert ping.status_code == 503 and "device failed" in ping.get_json()["error"]["message"]
    later = client.post("/invocations", json=["three"])
    assert later.status_code == 503 and "illegal memory access" in later.get_json()["error"]["message"]
    assert failures_counted() == before + 1
    assert len(exits) == 1 and "illegal memory access" in exits[0]


def test_out_of_memory_is_not_a_device_failure(faulty, monkeypatch):
    import torch

    device, service, client, exits = faulty
    real = device.classifier.predict_encoded

    def tight_memory(batch):
        if len(batch) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real(batch)

    monkeypatch.setattr(device.classifier, "predict_encoded", tight_memory)
    response = client.post("/invocations", json=["one", "two two", "three three three"])
    assert response.status_code == 200 and len(response.get_json()["predictions"]) == 3
    assert client.get("/ping").status_code == 200 and not exits
