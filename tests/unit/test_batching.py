"""The batcher: batch selection as a plain function, and the loop driven with a fake model (no sleeps to sync)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from serving.classifier import EncodedText
from serving.engine.batching import Batcher, select_batch
from serving.errors import NotReady, QueueFull, RequestTimeout


def texts(*lengths: int) -> list[EncodedText]:
    return [EncodedText(features=float(n), length=n, truncated=False) for n in lengths]


def test_select_batch_groups_similar_lengths_around_the_oldest():
    lengths = [10, 100, 11, 9, 120, 12, 50]
    picked = select_batch(lengths, max_size=4, max_tokens=10_000)
    assert 0 in picked and len(picked) == 4
    assert sorted(lengths[i] for i in picked) == [9, 10, 11, 12]


def test_select_batch_respects_the_padded_token_budget():
    lengths = [10, 10, 10, 10, 40]
    assert sorted(select_batch(lengths, max_size=8, max_tokens=30)) == [0, 1, 2]
    assert select_batch([500, 1], max_size=8, max_tokens=100) == [0]  # the oldest always goes, even alone


def test_select_batch_never_exceeds_size_or_budget_randomised():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = list(rng.integers(1, 130, size=rng.integers(1, 60)))
        size, budget = int(rng.integers(1, 33)), int(rng.integers(130, 4000))
        picked = select_batch(lengths, size, budget)
        assert 0 in picked and len(set(picked)) == len(picked) <= size
        assert len(picked) == 1 or max(lengths[i] for i in picked) * len(picked) <= budget


class FakeModel:
    """Scores a text as [its length, batch size]; can be told to fail or to hold a batch until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail_on: int | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: list[EncodedText]) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        lengths = [e.length for e in batch]
        self.batches.append(lengths)
        if self.fail_on is not None and self.fail_on in lengths:
            raise RuntimeError("boom")
        return np.array([[e.features, len(batch)] for e in batch], dtype=np.float32)


def make(model: FakeModel, **overrides) -> Batcher:
    options = dict(max_batch_size=4, max_batch_tokens=1000, max_queue_texts=64)
    options.update(overrides)
    return Batcher(model, 2, **options).start()


def test_a_request_split_across_batches_comes_back_in_order():
    model = FakeModel()
    batcher = make(model)
    lengths = [5, 90, 6, 80, 7, 70, 8, 60, 9]
    result = batcher.submit(texts(*lengths), timeout_s=10).result(10)
    assert result.scores[:, 0].tolist() == lengths
    assert len(model.batches) >= 3 and all(len(b) <= 4 for b in model.batches)
    assert batcher.stop()


def test_concurrent_requests_share_batches():
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_batch_size=16)
    first = batcher.submit(texts(3), 10)
    model.entered.wait(5)  # the loop is now busy with the first request
    later = [batcher.submit(texts(n), 10) for n in range(10, 20)]
    model.gate.set()
    assert first.result(10).scores[0, 0] == 3
    assert [f.result(10).scores[0, 0] for f in later] == list(range(10, 20))
    assert max(len(b) for b in model.batches) == 10  # the ten waiting texts went in one batch
    batcher.stop()


def test_a_failing_batch_fails_its_requests_and_the_loop_lives_on():
    model = FakeModel()
    model.gate.clear()
    batcher = make(model)
    blocker = batcher.submit(texts(1), 10)
    model.entered.wait(5)
    model.fail_on = 500
    bad = batcher.submit(texts(500), 10)
    model.gate.set()
    with pytest.raises(RuntimeError, match="boom"):
        bad.result(10)
    assert blocker.result(10).scores.shape == (1, 2)
    model.fail_on = None
    assert batcher.submit(texts(2), 10).result(10).scores[0, 0] == 2
    assert batcher.alive
    batcher.stop()


def test_full_queue_refuses_new_requests_and_keeps_accepted_ones():
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_queue_texts=5)
    running = batcher.submit(texts(1), 10)
    model.entered.wait(5)
    accepted = batcher.submit(texts(1, 2, 3, 4, 5), 10)
    with pytest.raises(QueueFull):
        batcher.submit(texts(6), 10)
    model.gate.set()
    assert running.result(10) and accepted.result(10).scores[:, 0].tolist() == [1, 2, 3, 4, 5]
    batcher.stop()


def test_requests_past_their_deadline_are_dropped_before_compute():
    model = FakeModel()
    model.gate.clear()
    batcher = make(model)
    running = batcher.submit(texts(1), 10)
    model.entered.wait(5)
    expired = batcher.submit(texts(77), timeout_s=0.001)
    threading.Event().wait(0.01)  # its deadline passes while it waits behind the running batch
    model.gate.set()
    with pytest.raises(RequestTimeout):
        expired.result(10)
    running.result(10)
    batcher.stop()
    assert all(77 not in b for b in model.batches)


def test_stop_drains_the_queue_then_refuses():
    model = FakeModel()
    model.gate.clear()
    batcher = make(model)
    futures = [batcher.submit(texts(n), 10) for n in range(1, 9)]
    model.entered.wait(5)
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    model.gate.set()
    stopper.join(10)
    assert [f.result(0).scores[0, 0] for f in futures] == list(range(1, 9))
    with pytest.raises(NotReady):
        batcher.submit(texts(1), 10)


def test_a_model_returning_the_wrong_row_count_is_an_error_for_its_callers():
    batcher = Batcher(lambda batch: np.zeros((len(batch) + 1, 2)), 2, max_batch_size=4,
                      max_batch_tokens=100).start()
    with pytest.raises(RuntimeError, match="rows for a batch"):
        batcher.submit(texts(1, 2), 10).result(10)
    batcher.stop()


def test_cuda_out_of_memory_splits_the_batch_instead_of_failing():
    import torch

    from serving.engine.device import predict_splitting_on_oom

    calls = []

    def predict(batch):
        calls.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return np.array([[x] for x in batch], dtype=np.float32)

    out = predict_splitting_on_oom(predict, list(range(7)))
    assert out[:, 0].tolist() == list(range(7)) and calls[:3] == [7, 3, 1]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        predict_splitting_on_oom(lambda batch: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError()), [1])


def test_select_batch_bounds_the_padding_share():
    lengths = [100, 95, 90, 40, 35, 30]
    loose = select_batch(lengths, max_size=8, max_tokens=10_000, max_padding=1.0)
    tight = select_batch(lengths, max_size=8, max_tokens=10_000, max_padding=0.1)
    assert len(loose) == 6
    assert sorted(lengths[i] for i in tight) == [90, 95, 100]
    padded = max(lengths[i] for i in tight) * len(tight)
    assert padded - sum(lengths[i] for i in tight) <= 0.1 * padded


def test_select_batch_takes_padding_only_up_to_the_per_text_break_even():
    lengths = [50, 52, 60, 90, 20]
    assert sorted(select_batch(lengths, 8, 10_000, padding_per_text=0)) == [0]  # only equal lengths
    picked = select_batch(lengths, 8, 10_000, padding_per_text=9)
    assert sorted(lengths[i] for i in picked) == [50, 52, 60]  # 10 + 8 padding tokens <= 9 per added text
    assert sorted(lengths[i] for i in select_batch(lengths, 8, 10_000, padding_per_text=8)) == [50, 52]
    assert len(select_batch(lengths, 8, 10_000, padding_per_text=1_000)) == 5
    assert sorted(select_batch([7, 7, 7], 8, 10_000, padding_per_text=0)) == [0, 1, 2]


def test_a_request_that_finds_the_model_idle_runs_inline_and_others_queue_behind_it():
    model = FakeModel()
    threads: list[int] = []
    inner = model.__call__
    model_call = lambda batch: (threads.append(threading.get_ident()), inner(batch))[1]  # noqa: E731
    batcher = Batcher(model_call, 2, max_batch_size=4, max_batch_tokens=1000, run_inline_when_idle=True).start()
    assert batcher.submit(texts(3), 10).result(0).scores[0, 0] == 3  # settled before submit returned
    assert threads == [threading.get_ident()]

    model.gate.clear()
    model.entered.clear()
    runner = threading.Thread(target=lambda: batcher.submit(texts(1), 10))
    runner.start()
    model.entered.wait(5)  # the model is busy inline in `runner`: these queue for the loop
    queued = [batcher.submit(texts(n), 10) for n in (10, 11, 12)]
    assert not any(f.done() for f in queued)
    model.gate.set()
    runner.join(5)
    assert [f.result(10).scores[0, 0] for f in queued] == [10, 11, 12]
    assert model.batches[-1] == [10, 11, 12] and threads[-1] == batcher._thread.ident
    oversized = batcher.submit(texts(1, 2, 3, 4, 5, 6), 10)  # more than one batch holds: the loop splits it
    assert oversized.result(10).scores[:, 0].tolist() == [1, 2, 3, 4, 5, 6] and threads[-1] == batcher._thread.ident
    assert batcher.stop()


def test_inline_and_loop_batches_never_overlap_under_concurrent_load():
    running, overlaps = [0], []
    lock = threading.Lock()

    def model(batch):
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        result = np.array([[e.features, len(batch)] for e in batch], dtype=np.float32)
        with lock:
            running[0] -= 1
        return result

    batcher = Batcher(model, 2, max_batch_size=8, max_batch_tokens=1000, run_inline_when_idle=True).start()
    results: list = []

    def client(seed: int) -> None:
        for n in range(1, 40):
            length = (seed * 7 + n) % 50 + 1
            results.append(batcher.submit(texts(length), 10).result(10).scores[0, 0] == length)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert len(results) == 16 * 39 and all(results)
    assert max(overlaps) == 1  # one batch at a time, whichever thread ran it
    assert batcher.stop()


def test_no_inline_path_when_a_batch_delay_is_asked_for():
    assert not Batcher(FakeModel(), 2, max_batch_size=4, max_batch_tokens=100, max_batch_delay_ms=5,
                       run_inline_when_idle=True).run_inline_when_idle


@pytest.mark.parametrize("attempt", range(3))  # the lost wake-up this guards against depends on thread timing
def test_a_part_waiting_for_room_is_queued_when_the_loop_takes_a_batch_with_no_further_traffic(attempt):
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_queue_texts=3, max_batch_size=3)
    running = batcher.submit(texts(1), 10)
    model.entered.wait(5)
    queued = batcher.submit(texts(2, 3, 4), 10)
    later: list = []
    waiter = threading.Thread(target=lambda: later.append(batcher.submit(texts(5, 6), 10, wait_for_room=True)))
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive() and batcher.queued_texts == 3  # no room yet: waiting, not refused
    model.gate.set()  # the running batch ends; the loop takes the queued one, which makes room
    waiter.join(2)  # well before the part's own 10 s deadline: the loop must wake it
    assert later and later[0].result(10).scores[:, 0].tolist() == [5, 6]
    assert running.result(10) and queued.result(10).scores[:, 0].tolist() == [2, 3, 4]
    batcher.stop()


def test_a_part_waiting_for_room_times_out_and_a_failed_device_releases_it():
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_queue_texts=1)
    batcher.submit(texts(1), 10)
    model.entered.wait(5)
    batcher.submit(texts(2), 10)
    with pytest.raises(RequestTimeout):
        batcher.submit(texts(3), 0.05, wait_for_room=True)
    outcome: list = []

    def wait_then_record():
        try:
            batcher.submit(texts(3), 10, wait_for_room=True)
        except NotReady as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_then_record)
    waiter.start()
    batcher.fail(NotReady("device failed"))
    waiter.join(5)
    assert outcome and "device failed" in str(outcome[0])
    model.gate.set()
    batcher.stop()


def test_a_request_whose_deadline_passed_before_queueing_never_reaches_the_model_inline_or_not():
    for inline in (False, True):
        model = FakeModel()
        batcher = make(model, run_inline_when_idle=inline)
        with pytest.raises(RequestTimeout):
            batcher.submit(texts(3), 0.0)
        assert model.batches == [] and batcher.queued_texts == 0
        batcher.stop()


def test_a_part_waiting_for_room_when_the_server_stops_is_told_it_is_shutting_down():
    model = FakeModel()
    model.gate.clear()
    batcher = make(model, max_queue_texts=1)
    batcher.submit(texts(1), 10)
    model.entered.wait(5)
    queued = batcher.submit(texts(2), 10)
    outcome: list = []

    def wait_then_record():
        try:
            outcome.append(batcher.submit(texts(3), 10, wait_for_room=True))
        except Exception as exc:  # noqa: BLE001 - the test asserts which one
            outcome.append(exc)

    waiter = threading.Thread(target=wait_then_record)
    waiter.start()
    waiter.join(0.05)
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()  # SIGTERM's drain: refuse new work, finish what is queued
    waiter.join(5)
    assert outcome and isinstance(outcome[0], NotReady), outcome  # 503, not 429 and not queued after the stop
    model.gate.set()
    assert queued.result(10).scores[:, 0].tolist() == [2]  # what was queued before the stop still completes
    stopper.join(10)


def test_a_delivery_runs_once_on_the_settling_thread_when_a_request_settles_on_two():
    model = FakeModel()
    model.gate.clear()
    batcher = make(model)
    deliveries: list[tuple] = []
    deliver = lambda result, error: deliveries.append((result, error, threading.get_ident()))  # noqa: E731
    batcher.submit_calling(deliver, texts(1, 2, 3, 4, 5), 10)  # four texts run, the fifth waits
    model.entered.wait(5)
    batcher.fail(NotReady("device lost"))  # settles the request through its waiting text, on this thread
    model.fail_on = 1
    model.gate.set()  # the running batch then fails too: a second settlement, not delivered
    batcher._thread.join(5)
    assert len(deliveries) == 1 and model.batches == [[1, 2, 3, 4]]
    result, error, thread = deliveries[0]
    assert result is None and isinstance(error, NotReady) and thread == threading.get_ident()


def test_a_delivery_that_raises_leaves_the_rest_of_its_batch_delivered_and_the_loop_alive():
    model = FakeModel()
    model.gate.clear()
    batcher = make(model)
    blocker = batcher.submit(texts(1), 10)
    model.entered.wait(5)
    delivered: list[float] = []

    def broken(result, error) -> None:
        raise ValueError("the receiver failed")

    second = threading.Event()
    batcher.submit_calling(broken, texts(7), 10)
    batcher.submit_calling(lambda result, error: (delivered.append(result.scores[0, 0]), second.set()), texts(8), 10)
    model.gate.set()
    blocker.result(10)
    assert second.wait(10)
    assert batcher.submit(texts(9), 10).result(10).scores[0, 0] == 9  # the loop lives on
    assert delivered == [8] and model.batches[1] == [7, 8]
    batcher.stop()


def test_a_delivery_of_an_inline_run_is_made_before_submit_calling_returns():
    batcher = Batcher(FakeModel(), 2, max_batch_size=4, max_batch_tokens=1000, run_inline_when_idle=True).start()
    deliveries: list[tuple] = []
    batcher.submit_calling(lambda result, error: deliveries.append((result.scores[0, 0], threading.get_ident())),
                           texts(3), 10)
    assert deliveries == [(3, threading.get_ident())]
    with pytest.raises(RequestTimeout):  # refused before queueing: raised, never delivered
        batcher.submit_calling(lambda result, error: deliveries.append(("late", 0)), texts(4), 0)
    assert len(deliveries) == 1
    assert batcher.stop()
