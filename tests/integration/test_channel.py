"""The channel end to end in one process: a real engine endpoint (the real batcher over a real model or a
simulated accelerator) served on its Unix socket, and the front end's EngineClient talking to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from serving.board import Board, EngineState, error_path, socket_address
from serving.config import Settings
from serving.engine.endpoint import Endpoint
from serving.engine.main import load_service
from serving.engine.models import EngineModels
from serving.errors import NotReady, QueueFull
from serving.frontend.engines import EngineClient, EngineLost
from serving.models.simulated import SimulatedAccelerator
from serving.service import InferenceService

TEXTS = ["you are an idiot", "thanks, that helped a lot", "I will find you", "what a lovely day", "shut up",
         "the meeting moved to Tuesday", "go away, loser", "great game last night"]


@contextlib.contextmanager
def engine(tmp_path: Path, slow_ms: float = 0.0, **settings):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    board = Board.create(run_dir, 1)
    board.write(0, pid=os.getpid(), state=EngineState.STARTING)
    service = load_service(Settings(**settings), 0, "cpu", 1)
    if slow_ms:  # after the warm-up: a device that takes this long per forward
        service.classifier.accelerator = SimulatedAccelerator(0, slow_ms, 0.0)
    models = EngineModels(Settings(**settings), "cpu", load_service=None)
    models.add("", service)
    endpoint = Endpoint(models, socket_address(run_dir, 0), board, 0, drain_s=10)
    thread = threading.Thread(target=endpoint.serve, daemon=True)
    thread.start()
    board.write(0, state=EngineState.READY)
    client = EngineClient(run_dir, max_queue_texts=settings.get("max_queue_texts", 2048), max_in_flight=64)
    try:
        yield client, board, service, endpoint
    finally:
        endpoint.stop()
        thread.join(15)
        assert not thread.is_alive()


def sim(demo_dir: Path, fixed_ms: float, **more) -> dict:
    return {"backend": "sim", "model_dir": str(demo_dir / "roberta"), "sim_fixed_ms": 1, "slow_ms": fixed_ms, **more}


def test_requests_from_many_threads_get_their_own_scores(demo_dir, tmp_path):
    with engine(tmp_path, backend="torch", model_dir=str(demo_dir / "rnn")) as (client, _, service, _):
        expected = service.classifier.predict(TEXTS)

        def score(i: int) -> np.ndarray:
            texts = [TEXTS[(i + k) % len(TEXTS)] for k in range(1 + i % 3)]
            return client.submit(service.classifier.encode(texts), 10).result(10).scores, texts

        with ThreadPoolExecutor(8) as pool:
            for scores, texts in pool.map(score, range(64)):
                np.testing.assert_allclose(scores, [expected[TEXTS.index(t)] for t in texts], atol=1e-5)


def test_a_request_queued_behind_a_running_batch_completes_with_no_further_traffic(demo_dir, tmp_path):
    with engine(tmp_path, **sim(demo_dir, 300)) as (client, _, service, _):
        first = client.submit(service.classifier.encode(["first"]), 10)
        time.sleep(0.05)  # the first is running
        second_sent = {}

        def second() -> None:
            started = time.monotonic()
            pending = client.submit(service.classifier.encode(["second"]), 10)
            second_sent["result"] = pending.result(10)
            second_sent["waited"] = time.monotonic() - started

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(5)
        assert "result" in second_sent and second_sent["waited"] > 0.45  # its own forward after the first's
        assert first.result(5).scores.shape == (1, 7)


def test_an_engine_replaced_while_a_request_waits_answers_503_within_a_fraction_of_a_second(demo_dir, tmp_path):
    with engine(tmp_path, **sim(demo_dir, 3000)) as (client, board, service, _):
        pending = client.submit(service.classifier.encode(["slow"]), 30)
        board.write(0, pid=os.getpid() + 100000, state=EngineState.DEAD)  # what the supervisor writes
        started = time.monotonic()
        with pytest.raises(EngineLost) as raised:
            pending.result(30)
        assert time.monotonic() - started < 1.0
        assert raised.value.status == 503
        with pytest.raises(NotReady, match="being restarted"):
            client.submit(service.classifier.encode(["next"]), 10)
        board.write(0, pid=os.getpid(), state=EngineState.READY)


def test_admission_refuses_before_any_work_when_queues_or_threads_are_full(demo_dir, tmp_path):
    with engine(tmp_path, **sim(demo_dir, 1, max_queue_texts=16)) as (client, board, service, _):
        client.admit(4)
        board.set_queued(0, 14)
        with pytest.raises(QueueFull, match="queues are full"):
            client.admit(4)
        client.admit(2)
        client.admit(9)  # more than half the queue: fed in parts that wait for room, never refused for size
        board.set_queued(0, 0)
        client.max_in_flight = 1
        pending = client.submit(service.classifier.encode(["one"]), 10)
        with pytest.raises(QueueFull, match="wait for the engines"):
            client.admit(1)
        pending.result(5)
        client.admit(1)


def test_ping_reasons_follow_the_board(tmp_path):
    run_dir = tmp_path
    board = Board.create(run_dir, 2)
    client = EngineClient(run_dir, 64, 8)
    assert not client.alive and client.why_not_alive() == "model is loading"
    board.write(1, state=EngineState.READY)
    assert client.alive
    board.forward(1, time.monotonic() - 200)  # a forward stuck in a device call: the heartbeat thread beats on
    board.beat(1)
    assert not client.alive and "does not answer" in client.why_not_alive()
    board.forward(1, 0.0)
    assert client.alive
    board.write(1, state=EngineState.DEAD)
    assert "being restarted" in client.why_not_alive()
    error_path(run_dir, 0).write_text("ModelLoadError: config.json is missing")
    board.write(0, state=EngineState.FAILED)
    assert client.why_not_alive() == "model failed to load: ModelLoadError: config.json is missing"
    board.write(0, state=EngineState.STOPPING)
    board.write(1, state=EngineState.STOPPING)
    assert client.why_not_alive() == "the server is shutting down"


def test_a_draining_engine_finishes_what_it_took_and_refuses_the_rest(demo_dir, tmp_path):
    with engine(tmp_path, **sim(demo_dir, 400)) as (client, board, service, endpoint):
        taken = client.submit(service.classifier.encode(["taken"]), 10)
        time.sleep(0.1)
        endpoint.stop()
        deadline = time.monotonic() + 2
        while board.read(0).state != EngineState.STOPPING and time.monotonic() < deadline:
            time.sleep(0.01)
        board.write(0, state=EngineState.READY)  # a front end that has not yet seen the drain sends anyway
        late = client.submit(service.classifier.encode(["late"]), 10)
        with pytest.raises(NotReady, match="shutting down"):
            late.result(5)
        assert taken.result(5).scores.shape == (1, 7)


def test_a_request_over_half_the_queue_goes_in_parts_and_counts_once_in_flight(demo_dir, tmp_path):
    from serving.service import InferenceService, RequestOptions

    with engine(tmp_path, **sim(demo_dir, 10, max_queue_texts=16)) as (client, _, service, _):
        client.max_in_flight = 2
        front = InferenceService(service.classifier, Settings(max_queue_texts=16), None, queue=client)
        texts = [f"text number {i}" for i in range(200)]
        seen, done = [], threading.Event()

        def watch() -> None:
            while not done.is_set():
                seen.append(client._in_flight)
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        small = [front.classify([f"small {i}"], RequestOptions()) for i in range(1)]
        result = front.classify(texts, RequestOptions())  # 25 parts, fed in order while they wait for room
        done.set()
        watcher.join()
        assert len(result.results) == 200 and len(small[0].results) == 1
        assert max(seen) == 1, max(seen)  # one request in flight, however many parts it sent
        assert client._in_flight == 0
        client.admit(1)


def test_models_are_loaded_and_unloaded_over_the_channel_and_requests_name_them(demo_dir, tmp_path):
    from serving.channel import ControlReply, ControlRequest, failure_reply, pack, unpack
    from serving.engine.main import load_service
    from serving.errors import ModelExists, ModelNotFound

    assert unpack(pack(ControlRequest(7, 42, "load", "m", "/x"))) == ControlRequest(7, 42, "load", "m", "/x")
    assert unpack(pack(ControlReply(7, {"a": [1]}, "", ""))) == ControlReply(7, {"a": [1]}, "", "")
    lost = failure_reply(7, EngineLost("gone"), ControlReply)  # a front-end subclass travels as its base: still 503
    with pytest.raises(NotReady):
        lost.raise_error()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    board = Board.create(run_dir, 1)
    board.write(0, pid=os.getpid(), state=EngineState.STARTING)
    settings = Settings(backend="sim", multi_model=True)
    release = threading.Event()
    release.set()

    def held_load(s, folder, name):
        release.wait(10)
        return load_service(s, 0, "cpu", 1, folder, name)

    models = EngineModels(settings, "cpu", held_load)
    endpoint = Endpoint(models, socket_address(run_dir, 0), board, 0, drain_s=10)
    thread = threading.Thread(target=endpoint.serve, daemon=True)
    thread.start()
    board.write(0, state=EngineState.READY)
    client = EngineClient(run_dir, 2048, 8)
    try:
        [loaded] = client.control("load", "lstm", str(demo_dir / "rnn"), "", 30)
        assert not loaded.error_kind and loaded.detail["family"] == "rnn"
        [again] = client.control("load", "lstm", str(demo_dir / "rnn"), "", 30)
        assert again.error_kind == "ModelExists"
        with pytest.raises(ModelExists):
            again.raise_error()
        text_side = models._services["lstm"].classifier
        assert client.submit(text_side.encode(TEXTS[:2]), 10, model="lstm").result(10).scores.shape == (2, 7)
        with pytest.raises(ModelNotFound):
            client.submit(text_side.encode(TEXTS[:1]), 10, model="other").result(10)
        release.clear()  # a slow load does not count against the invocations' in-flight cap while it waits
        slow = ThreadPoolExecutor(1).submit(client.control, "load", "slow", str(demo_dir / "rnn"), "", 30)
        time.sleep(0.3)
        assert client._in_flight == 0 and not slow.done()
        release.set()
        assert not slow.result(30)[0].error_kind
        [unloaded] = client.control("unload", "lstm", "", "", 30)
        assert unloaded.detail["drained"] is True
        with pytest.raises(ModelNotFound):
            client.submit(text_side.encode(TEXTS[:1]), 10, model="lstm").result(10)
        assert client._in_flight == 0  # control requests leave nothing counted in flight
    finally:
        endpoint.stop()
        thread.join(15)


def test_an_unreadable_message_is_dropped_and_the_engine_keeps_serving(demo_dir, tmp_path, caplog):
    import pickle
    import socket

    from serving.channel import LENGTH, MAX_MESSAGE, ScoreRequest, frame, pack

    with engine(tmp_path, backend="sim", model_dir=str(demo_dir / "rnn")) as (client, _, service, _):
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(socket_address(client.run_dir, 0))
        raw.sendall(frame(b"not a pickle"))
        raw.sendall(frame(pickle.dumps((1, 2, 3))))  # a record of the wrong shape
        mismatched = ScoreRequest(1, os.getpid(), time.monotonic() + 10, [np.array([0, 1])], [1, 2])
        raw.sendall(frame(pack(mismatched))[:7])  # features and lengths that do not pair up, in two pieces
        time.sleep(0.05)
        raw.sendall(frame(pack(mismatched))[7:])
        deadline = time.monotonic() + 10
        while caplog.text.count("dropped a message") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert caplog.text.count("dropped a message") == 3
        raw.sendall(LENGTH.pack(MAX_MESSAGE + 1))  # a stream no longer in step: the engine lets it go
        raw.settimeout(10)
        assert raw.recv(10) == b""
        raw.close()
        assert "dropped a connection that sent a message of" in caplog.text
        assert client.submit(service.classifier.encode(TEXTS[:1]), 10).result(10).scores.shape == (1, 7)


# The same channel from a front end's event loop (serving.frontend.asgi): one socket per engine for the loop, the
# replies read when the loop sees the socket ready.

def on_loop(coroutine_function, *args):
    """Run it on a fresh event loop, as a front end runs its requests."""
    return asyncio.run(coroutine_function(*args))


def test_requests_on_an_event_loop_get_their_own_scores(demo_dir, tmp_path):
    with engine(tmp_path, backend="torch", model_dir=str(demo_dir / "rnn")) as (client, _, service, _):
        expected = service.classifier.predict(TEXTS)

        async def score(i: int):
            texts = [TEXTS[(i + k) % len(TEXTS)] for k in range(1 + i % 3)]
            with client.waiting():
                return (await client.submit_on_loop(service.classifier.encode(texts), 10).result(10)).scores, texts

        async def all_of_them():
            return await asyncio.gather(*(score(i) for i in range(64)))

        for scores, texts in on_loop(all_of_them):
            np.testing.assert_allclose(scores, [expected[TEXTS.index(t)] for t in texts], atol=1e-5)
        assert client._in_flight == 0


def test_on_a_loop_the_requests_of_one_pass_go_to_the_engine_in_one_write(demo_dir, tmp_path, monkeypatch):
    """Requests sent in the same pass of the loop (those whose HTTP requests arrived together) share one write, so
    the engine wakes once for them; a request of a later pass has its own."""
    import serving.frontend.engines as engines

    writes: list[int] = []

    def counted(sock, outbox):
        writes.append(len(outbox))
        return send_kept(sock, outbox)

    send_kept = engines.send_kept
    monkeypatch.setattr(engines, "send_kept", counted)
    with engine(tmp_path, **sim(demo_dir, 5)) as (client, _, service, _):
        async def passes():
            together = [client.submit_on_loop(service.classifier.encode([text]), 10) for text in TEXTS * 3]
            await asyncio.sleep(0)
            alone = client.submit_on_loop(service.classifier.encode(["alone"]), 10)
            return await asyncio.gather(*(p.result(10) for p in [*together, alone]))

        results = on_loop(passes)
    assert len(results) == 25 and all(r.scores.shape == (1, 7) for r in results)
    assert len(writes) == 2, writes  # 24 requests in the first, the last on its own
    assert writes[0] > 20 * writes[1]


def test_on_a_loop_a_reply_that_comes_while_nothing_else_happens_is_read(demo_dir, tmp_path):
    """The loop reads a reply as soon as it comes, with no further traffic."""
    with engine(tmp_path, **sim(demo_dir, 300)) as (client, _, service, _):
        async def two():
            first = client.submit_on_loop(service.classifier.encode(["first"]), 10)
            await asyncio.sleep(0.05)  # the first is running
            started = time.monotonic()
            second = client.submit_on_loop(service.classifier.encode(["second"]), 10)
            results = await asyncio.wait_for(asyncio.gather(first.result(10), second.result(10)), 5)
            return results, time.monotonic() - started

        (first, second), waited = on_loop(two)
        assert first.scores.shape == second.scores.shape == (1, 7)
        assert 0.45 < waited < 3  # its own forward after the first's, read as soon as it came


def test_on_a_loop_a_reply_that_came_before_a_send_is_read_at_once(demo_dir, tmp_path):
    """A reply that came while the loop was busy is read as soon as the loop is free, not when the next reply
    comes."""
    with engine(tmp_path, **sim(demo_dir, 300)) as (client, _, service, endpoint):
        async def two():
            first = client.submit_on_loop(service.classifier.encode(["first"]), 10)
            await asyncio.sleep(0)  # the pass of the loop ends: its write goes to the engine
            waited = time.monotonic()
            while endpoint._in_flight == 0 and time.monotonic() - waited < 5:  # until the engine took it
                time.sleep(0.005)
            while endpoint._in_flight and time.monotonic() - waited < 5:  # the loop is busy: the first's reply
                time.sleep(0.005)  # is sent meanwhile, and not read
            time.sleep(0.02)
            sent = time.monotonic()
            second = client.submit_on_loop(service.classifier.encode(["second"]), 10)
            await first.result(5)
            first_after = time.monotonic() - sent
            await second.result(5)
            return first_after

        assert on_loop(two) < 0.2  # not after the second's 300 ms forward


def test_on_a_loop_an_engine_replaced_while_a_request_waits_answers_503_within_a_fraction_of_a_second(
        demo_dir, tmp_path):
    with engine(tmp_path, **sim(demo_dir, 3000)) as (client, board, service, _):
        async def lost():
            pending = client.submit_on_loop(service.classifier.encode(["slow"]), 30)
            board.write(0, pid=os.getpid() + 100000, state=EngineState.DEAD)  # what the supervisor writes
            started = time.monotonic()
            with pytest.raises(EngineLost) as raised:
                await pending.result(30)
            return time.monotonic() - started, raised.value

        waited, error = on_loop(lost)
        assert waited < 1.0 and error.status == 503
        board.write(0, pid=os.getpid(), state=EngineState.READY)


def test_on_a_loop_a_request_past_its_deadline_stops_waiting_and_the_next_is_answered(demo_dir, tmp_path):
    from serving.errors import RequestTimeout
    from serving.service import InferenceService, RequestOptions

    with engine(tmp_path, **sim(demo_dir, 400)) as (client, _, service, _):
        front = InferenceService(service.classifier, Settings(timeout_s=1), None, queue=client)

        async def late_then_next():
            steps = front.classify_steps(["slow"], RequestOptions())
            texts, _ = next(steps)
            with pytest.raises(RequestTimeout):
                await front.score_on_loop(texts, time.monotonic() + 0.1)
            assert client._in_flight == 0 and not client._loop.waiting
            await asyncio.sleep(0.5)  # its late reply comes and is dropped
            texts, _ = next(front.classify_steps(["next"], RequestOptions()))
            return await front.score_on_loop(texts, time.monotonic() + 5)

        assert on_loop(late_then_next).scores.shape == (1, 7)


def test_on_a_loop_a_request_over_half_the_queue_goes_in_parts_and_counts_once_in_flight(demo_dir, tmp_path):
    from serving.frontend.asgi import drive_on_loop
    from serving.service import InferenceService, RequestOptions

    with engine(tmp_path, **sim(demo_dir, 10, max_queue_texts=16)) as (client, _, service, _):
        front = InferenceService(service.classifier, Settings(max_queue_texts=16), None, queue=client)
        texts = [f"text number {i}" for i in range(200)]
        seen = []

        async def watch():
            while True:
                seen.append(client._in_flight)
                await asyncio.sleep(0.005)

        async def big():
            watcher = asyncio.get_running_loop().create_task(watch())
            result = await drive_on_loop(front.classify_steps(texts, RequestOptions()), front.score_on_loop,
                                         time.monotonic() + 30)
            watcher.cancel()
            return result

        result = on_loop(big)
        assert len(result.results) == 200
        assert max(seen) == 1, max(seen)  # one request in flight, however many parts it sent
        assert client._in_flight == 0


def test_a_reply_handed_over_while_the_engine_takes_its_wake_ups_does_not_silence_later_ones(tmp_path):
    """The batcher's thread hands replies to the I/O thread with one wake-up byte for all that queue meanwhile. A
    hand-over that lands while the I/O thread reads the wake-up bytes must leave the next hand-over able to wake it:
    otherwise every later reply waits for the next request or the poll timeout (seen as latency tripling under load)."""
    import select
    import socket

    from serving.channel import ScoreReply
    from serving.engine.endpoint import Connection, Endpoint

    board = Board.create(tmp_path, 1)
    endpoint = Endpoint(EngineModels(Settings(), "cpu", load_service=None), str(tmp_path / "e.sock"), board, 0, 1)
    ours, theirs = socket.socketpair()
    connection = Connection(ours)

    def hand_over_from_another_thread(request_id: int) -> None:
        thread = threading.Thread(target=endpoint._hand_over, args=(connection, ScoreReply(request_id)))
        thread.start()
        thread.join()

    class WakeReader:  # the real one, with a hand-over landing during its first read
        def __init__(self, real):
            self.real, self.calls = real, 0

        def recv(self, size: int) -> bytes:
            self.calls += 1
            if self.calls == 1:
                hand_over_from_another_thread(2)
            return self.real.recv(size)

    hand_over_from_another_thread(1)
    real = endpoint._wake_reader
    endpoint._wake_reader = WakeReader(real)
    endpoint._take_wakeups()
    endpoint._send_replies()
    assert endpoint._in_flight == -2  # both taken (nothing was counted in: the test hands over directly)
    hand_over_from_another_thread(3)
    assert select.select([real], [], [], 0)[0], "the third reply sent no wake-up: the I/O thread would sleep on it"
    endpoint._wake_reader = real
    endpoint._close_all()
    ours.close()
    theirs.close()


def test_on_a_loop_a_connection_the_engine_ends_fails_its_waits_at_once(tmp_path):
    """An engine that dies closes its connections: what waits on it gets 503 then, with the board still saying the
    engine serves (so no watch would catch it before the request's deadline)."""
    import socket

    from serving.classifier import EncodedText

    board = Board.create(tmp_path, 1)
    board.write(0, pid=os.getpid(), state=EngineState.READY)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_address(tmp_path, 0))
    listener.listen()
    listener.settimeout(10)
    client = EngineClient(tmp_path, max_queue_texts=2048, max_in_flight=8)

    def engine_that_dies() -> None:
        connection, _ = listener.accept()
        connection.recv(4096)  # the request came
        connection.close()

    dies = threading.Thread(target=engine_that_dies, daemon=True)
    dies.start()

    async def wait() -> float:
        pending = client.submit_on_loop([EncodedText(np.array([0, 5, 2]), 3, False)], 3)
        started = time.monotonic()
        with pytest.raises(EngineLost):
            await pending.result(3)
        return time.monotonic() - started

    assert on_loop(wait) < 1  # not the request's deadline: the board says the engine serves, so no watch fails it
    dies.join()
    listener.close()


def test_replies_a_front_end_does_not_read_yet_wait_in_the_engine_and_all_arrive(demo_dir, tmp_path):
    """More replies than a socket holds, sent while the front end is not reading: the engine keeps the rest and
    sends it as the front end reads, none lost or cut, the engine serving meanwhile."""
    import socket

    from serving.channel import Frames, ScoreRequest, frame, pack, unpack

    with engine(tmp_path, backend="sim", model_dir=str(demo_dir / "roberta")) as (_, _, service, endpoint):
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(socket_address(tmp_path / "run", 0))
        encoded = service.classifier.encode(TEXTS * 40)  # 320 texts: replies of 9 KB each
        for request_id in range(1, 101):
            raw.sendall(frame(pack(ScoreRequest(request_id, os.getpid(), time.monotonic() + 60,
                                                [e.features for e in encoded], [e.length for e in encoded]))))
            time.sleep(0.03)  # the queue keeps room: every reply carries scores
        deadline = time.monotonic() + 30
        while endpoint._in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert endpoint._in_flight == 0
        assert any(c.outbox for c in endpoint._connections), "every reply fitted in the socket: nothing tested"
        frames, replies = Frames(), []
        raw.settimeout(10)
        while len(replies) < 100:
            replies += [unpack(payload) for payload in frames.feed(raw.recv(1 << 16))]
        raw.close()
        assert sorted(r.request_id for r in replies) == list(range(1, 101))  # each once (in the order they settled)
        assert all(r.error_kind == "" and r.scores.shape == (320, 7) for r in replies), {r.error_kind for r in replies}


def test_on_a_loop_a_request_larger_than_the_socket_holds_goes_whole(demo_dir, tmp_path):
    """The loop writes what the socket takes and the rest when the engine has read it: a large request's parts
    arrive whole, in order."""
    import socket

    with engine(tmp_path, backend="sim", model_dir=str(demo_dir / "roberta")) as (client, _, service, _):
        encoded = service.classifier.encode([" ".join(["thanks for the thoughtful reply"] * 30)] * 3000)

        front_end = SimpleNamespace(batcher=client, timeout_s=60)  # a front end's service: its batcher is the client

        async def score():
            return await InferenceService.score_on_loop(front_end, list(encoded), time.monotonic() + 20), client._loop

        result, channel = on_loop(score)
        assert result.scores.shape == (3000, 7)
        [link] = channel.links.values()
        part_bytes = 1024 * encoded[0].length * 4
        assert part_bytes > 2 * link.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)  # never in one send
