"""backend sim: the folder's real text side, a forward that waits on a simulated device without host CPU."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest

from serving import load_classifier
from serving.config import Settings
from serving.models.simulated import LOCKS_ENV, SIM_SCORE, SimulatedAccelerator, make_device_locks
from serving.service import InferenceService, RequestOptions


@pytest.mark.parametrize("family", ["roberta", "rnn"])
def test_a_forward_waits_fixed_plus_per_token_without_host_cpu(demo_dir, family):
    accelerator = SimulatedAccelerator(fixed_ms=30, per_token_us=500)
    classifier = load_classifier(demo_dir / family, backend="sim", accelerator=accelerator)
    reference = load_classifier(demo_dir / family, backend="torch")
    texts = ["hello there, nice to meet you", "you are an idiot", "a much longer comment " * 8]
    encoded = classifier.encode(texts)
    assert [e.length for e in encoded] == [e.length for e in reference.encode(texts)]  # the real tokenizer
    padded = len(texts) * max(e.length for e in encoded)
    expected = 0.030 + 0.0005 * padded
    wall, cpu = time.perf_counter(), time.process_time()
    scores = classifier.predict_encoded(encoded)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert expected <= wall < expected + 0.05
    assert cpu < 0.3 * expected  # it waited; it did not compute
    assert scores.shape == (3, len(classifier.labels)) and (scores == np.float32(SIM_SCORE)).all()


def _forwards(locks: str, index: int, count: int, seconds: float, go, out) -> None:
    import os

    os.environ[LOCKS_ENV] = locks
    from serving.models.simulated import SimulatedForward

    class Bare(SimulatedForward):  # the device side alone, no model folder
        labels = ("toxicity",)

        def __init__(self, accelerator):
            self.accelerator = accelerator
            self._lock_fd = os.open(f"{locks}/device-{accelerator.index}.lock", os.O_RDWR)

        def prepare(self, batch):
            pass

    from serving.classifier import EncodedText

    device = Bare(SimulatedAccelerator(index, fixed_ms=seconds * 1000, per_token_us=0))
    out.put("ready")
    go.wait(30)
    started = time.monotonic()
    for _ in range(count):
        device.predict_encoded([EncodedText(np.zeros(1), 1, False)])
    out.put(time.monotonic() - started)


@pytest.mark.parametrize("devices", [1, 2])
def test_processes_pinned_to_one_simulated_device_take_turns(devices):
    """Two processes on one device never run forwards at once (a GPU's compute is shared); on two devices
    they do."""
    locks = str(make_device_locks(devices))
    context = multiprocessing.get_context("spawn")
    out, go = context.Queue(), context.Event()
    workers = [context.Process(target=_forwards, args=(locks, i % devices, 4, 0.08, go, out)) for i in range(2)]
    for worker in workers:
        worker.start()
    assert [out.get(timeout=60), out.get(timeout=60)] == ["ready", "ready"]  # both imported, both waiting
    go.set()
    slowest = max(out.get(timeout=30), out.get(timeout=30))
    for worker in workers:
        worker.join(10)
    if devices == 1:  # eight 80 ms forwards one after another
        assert slowest >= 8 * 0.08 * 0.95, slowest
    else:  # four each, side by side
        assert slowest < 6 * 0.08, slowest


def test_the_service_batches_on_a_simulated_device(demo_dir):
    settings = Settings(backend="sim", sim_fixed_ms=5, sim_per_token_us=1)
    classifier = load_classifier(demo_dir / "rnn", backend="sim",
                                 accelerator=SimulatedAccelerator(0, settings.sim_fixed_ms, settings.sim_per_token_us))
    service = InferenceService(classifier, settings)
    try:
        results = service.classify(["have a nice day"] * 5, RequestOptions()).results
        assert [r["labels"] for r in results] == [[]] * 5
        assert results[0]["scores"]["toxicity"] == np.float32(SIM_SCORE)
    finally:
        service.stop(5)


def test_settings_refuse_nonsense_for_the_simulation():
    for bad in ({"sim_devices": 0}, {"sim_fixed_ms": -1}, {"sim_per_token_us": -0.5}, {"backend": "simulated"}):
        with pytest.raises(ValueError):
            Settings(**bad)
    assert Settings.from_env({"SERVING_BACKEND": "sim", "SERVING_SIM_DEVICES": "2", "SERVING_SIM_FIXED_MS": "0.7",
                              "SERVING_SIM_PER_TOKEN_US": "3"}) == Settings(backend="sim", sim_devices=2,
                                                                            sim_fixed_ms=0.7, sim_per_token_us=3)
