"""backend sim: the folder's real text side, a forward that waits on a simulated device without host CPU."""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
    assert expected <= wall < expected + 0.5  # a sleep overshoots a little, and more on a loaded machine
    assert cpu < 0.3 * expected  # it waited; it did not compute
    assert scores.shape == (3, len(classifier.labels)) and (scores == np.float32(SIM_SCORE)).all()


def _forwards(model_dir: str, locks: str, index: int, count: int, seconds: float, go, out) -> None:
    """In a fresh process: the real simulated classifier on device `index` of the server's lock folder, its
    time on the device (each sleep, which runs under the device's lock) recorded on the shared clock."""
    import os

    os.environ[LOCKS_ENV] = locks
    from serving.models import simulated

    classifier = simulated.SimulatedRobertaClassifier(Path(model_dir), SimulatedAccelerator(index, seconds * 1000, 0))
    on_device = []
    sleep = simulated.time.sleep

    def recorded_sleep(duration):
        started = time.monotonic()
        sleep(duration)
        on_device.append((started, time.monotonic()))

    simulated.time.sleep = recorded_sleep
    encoded = classifier.encode(["hello"])
    out.put("ready")
    go.wait(30)
    for _ in range(count):
        classifier.predict_encoded(encoded)
    out.put(on_device)


@pytest.mark.parametrize("devices", [1, 2])
def test_processes_pinned_to_one_simulated_device_take_turns(demo_dir, devices):
    """Two processes on one device never hold it at once (a GPU's compute is shared); on two devices they do."""
    locks = str(make_device_locks(devices))
    context = multiprocessing.get_context("spawn")
    out, go = context.Queue(), context.Event()
    workers = [context.Process(target=_forwards, args=(str(demo_dir / "roberta"), locks, i % devices, 5, 0.06, go,
                                                        out)) for i in range(2)]
    for worker in workers:
        worker.start()
    assert [out.get(timeout=60), out.get(timeout=60)] == ["ready", "ready"]  # both loaded, both waiting
    go.set()
    first, second = out.get(timeout=30), out.get(timeout=30)
    for worker in workers:
        worker.join(10)
    assert len(first) == len(second) == 5
    overlap = sum(max(0.0, min(a_end, b_end) - max(a_start, b_start))
                  for a_start, a_end in first for b_start, b_end in second)
    if devices == 1:
        assert overlap == 0.0, (first, second)
    else:
        assert overlap > 0.0, (first, second)


def test_the_service_batches_requests_that_wait_for_a_simulated_device(demo_dir):
    settings = Settings(backend="sim", sim_fixed_ms=50, sim_per_token_us=1)
    classifier = load_classifier(demo_dir / "rnn", backend="sim",
                                 accelerator=SimulatedAccelerator(0, settings.sim_fixed_ms, settings.sim_per_token_us))
    sizes: list[int] = []
    service = InferenceService(classifier, settings, on_batch=lambda stats: sizes.append(stats.size))
    try:
        with ThreadPoolExecutor(8) as pool:  # one runs; the others queue behind its 50 ms and go together
            answers = list(pool.map(lambda i: service.classify([f"have a nice day {i}"], RequestOptions()),
                                    range(8)))
        assert [a.results[0]["labels"] for a in answers] == [[]] * 8
        assert answers[0].results[0]["scores"]["toxicity"] == np.float32(SIM_SCORE)
        assert sum(sizes) == 8 and max(sizes) > 1, sizes
    finally:
        service.stop(5)


def test_settings_refuse_nonsense_for_the_simulation():
    for bad in ({"sim_devices": 0}, {"sim_fixed_ms": -1}, {"sim_per_token_us": -0.5}, {"backend": "simulated"}):
        with pytest.raises(ValueError):
            Settings(**bad)
    assert Settings.from_env({"SERVING_BACKEND": "sim", "SERVING_SIM_DEVICES": "2", "SERVING_SIM_FIXED_MS": "0.7",
                              "SERVING_SIM_PER_TOKEN_US": "3"}) == Settings(backend="sim", sim_devices=2,
                                                                            sim_fixed_ms=0.7, sim_per_token_us=3)


@pytest.mark.skipif(sys.platform != "linux", reason="timer slack is Linux's")
def test_a_simulated_forward_sleeps_without_linux_timer_slack():
    """Linux ends a sleep up to 50 us late by default, which a device's forward is not: the forward's thread asks
    for 1 ns of slack, once."""
    import ctypes
    import threading

    from serving.models.simulated import exact_sleeps

    slack = []

    def forward_thread():
        prctl = ctypes.CDLL(None).prctl
        prctl(29, 50_000, 0, 0, 0)  # PR_SET_TIMERSLACK: Linux's default, whatever this thread inherited
        exact_sleeps()
        slack.append(prctl(30, 0, 0, 0, 0))  # PR_GET_TIMERSLACK

    thread = threading.Thread(target=forward_thread)
    thread.start()
    thread.join()
    assert slack == [1]
