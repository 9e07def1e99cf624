"""The front end's view of the engines: admission at the door, choosing an engine, and waiting for its answer.

EngineClient stands where the local Batcher stands for InferenceService (admit, submit -> a pending result,
queued_texts, alive), so the request path above it is the same in both layouts. Each request thread has its own
DEALER socket per engine and receives its own replies: no thread hand-off on the way in or out.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import zmq

from serving import metrics
from serving.board import Board, EngineState, EngineStatus, error_path, socket_address
from serving.channel import (
    BatchedResult,
    ControlReply,
    ControlRequest,
    ScoreReply,
    ScoreRequest,
    failure_reply,
    pack,
    unpack,
)
from serving.classifier import EncodedText
from serving.errors import NotReady, QueueFull, RequestTimeout, ServingError

log = logging.getLogger(__name__)

CHECK_S = 0.2  # while waiting for a reply, how often to look whether its engine is still the one it was sent to


class EngineLost(NotReady):
    code = "engine_restarting"


class EngineClient:
    """Talks to every engine of the server at `run_dir`; at most `max_in_flight` requests of this process wait
    on engines at once (more answer 429, so request threads stay free for /ping and for the 429s themselves)."""

    def __init__(self, run_dir: Path, max_queue_texts: int, max_in_flight: int) -> None:
        self.run_dir = run_dir
        self.board = Board.open(run_dir)
        self.max_queue_texts = max_queue_texts
        self.max_in_flight = max_in_flight
        self.context: zmq.Context = zmq.Context.instance()  # one per process: never torn down under live sockets
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._turn = itertools.count()
        self._in_flight = 0
        self._lock = threading.Lock()

    # what /ping and the metrics ask
    @property
    def alive(self) -> bool:
        return any(s.serving for s in self.board.all())

    @property
    def queued_texts(self) -> int:
        return sum(s.queued_texts for s in self.board.all())

    def why_not_alive(self) -> str:
        states = self.board.all()
        failed = [s for s in states if s.state == EngineState.FAILED]
        if failed:
            path = error_path(self.run_dir, failed[0].index)
            return f"model failed to load: {path.read_text() if path.exists() else 'see the engine log'}"
        if any(s.state == EngineState.DEAD for s in states):
            return "the engine stopped and is being restarted"
        if any(s.state == EngineState.READY for s in states):
            return "the engine does not answer (no heartbeat, or a forward stuck); it is being restarted"
        if all(s.state == EngineState.STOPPING for s in states):
            return "the server is shutting down"
        return "model is loading"

    # the request path
    def admit(self, texts: int) -> None:
        """Before tokenising: 429 when this process already has its share waiting, or no engine has room."""
        if self._in_flight >= self.max_in_flight:
            raise QueueFull(f"{self._in_flight} requests of this front end wait for the engines "
                            f"(limit {self.max_in_flight}); retry later")
        if texts <= self.max_queue_texts // 2:
            ready = self._ready()
            if ready and min(s.queued_texts for s in ready) + texts > self.max_queue_texts:
                raise QueueFull(f"the engines' queues are full (limit {self.max_queue_texts} texts each); "
                                "retry later")

    def _ready(self) -> list[EngineStatus]:
        return [s for s in self.board.all() if s.serving]

    def submit(self, encoded: list[EncodedText], timeout_s: float, wait_for_room: bool = False,
               room: int | None = None, model: str = "", generation: str = "") -> PendingScores:
        ready = self._ready()
        if not ready:
            raise NotReady(self.why_not_alive())
        turn = next(self._turn)
        engine = min(ready, key=lambda s: (s.queued_texts, (s.index - turn) % len(ready)))
        if not wait_for_room and engine.queued_texts + len(encoded) > self.max_queue_texts:
            raise QueueFull(f"queue is full ({engine.queued_texts} texts waiting, limit {self.max_queue_texts}); "
                            "retry later")
        request = ScoreRequest(next(self._ids), engine.pid, time.monotonic() + timeout_s,
                               [e.features for e in encoded], [e.length for e in encoded], wait_for_room, room, model,
                               generation)
        socket = self._socket(engine.index)
        try:
            socket.send(pack(request), zmq.NOBLOCK)
        except zmq.Again as exc:  # its high-water mark: the engine has stopped reading
            raise EngineLost(f"engine {engine.index} is not taking requests; retry") from exc
        self._started_waiting()
        return PendingScores(self, socket, engine, request.request_id)

    def control(self, op: str, name: str, path: str, generation: str, timeout_s: float,
                every_engine: bool = True) -> list[ControlReply]:
        """Load or unload a multi-model endpoint's model on the engines, side by side: every engine (503 unless all
        are serving), or with `every_engine` False those serving now (the others hold nothing of it once they
        have compared their models with the catalog). Each engine's reply, errors included."""
        states = self.board.all()
        if every_engine and not all(s.serving for s in states):
            raise NotReady(f"every engine must be up to {op} a model: {self.why_not_alive()}")
        pending: list[PendingScores] = []
        replies: list[ControlReply] = []
        try:
            for engine in [s for s in states if s.serving]:
                request = ControlRequest(next(self._ids), engine.pid, op, name, path, generation)
                socket = self._socket(engine.index)
                try:
                    socket.send(pack(request), zmq.NOBLOCK)
                except zmq.Again:
                    replies.append(failure_reply(request.request_id, EngineLost(
                        f"engine {engine.index} is not taking requests; retry"), ControlReply))
                    continue
                # not counted in flight: a load may take minutes, and the cap is there for invocations
                pending.append(PendingScores(self, socket, engine, request.request_id, counted=False))
            for waiting in pending:
                try:
                    reply = waiting.reply(timeout_s)
                except FutureTimeout:
                    late = RequestTimeout(f"engine {waiting.engine.index} did not finish the {op} within "
                                          f"{timeout_s:.0f} s")
                    reply = failure_reply(waiting.request_id, late, ControlReply)
                except ServingError as exc:  # the engine stopped first
                    reply = failure_reply(waiting.request_id, exc, ControlReply)
                assert isinstance(reply, ControlReply)
                replies.append(reply)
        finally:
            for waiting in pending:
                waiting.cancel()
        return replies

    def _socket(self, index: int) -> zmq.Socket:
        sockets = getattr(self._local, "sockets", None)
        if sockets is None:
            sockets = self._local.sockets = {}
            self._local.stash = {}  # replies received for another pending request of this thread
        socket = sockets.get(index)
        if socket is None:
            socket = sockets[index] = self.context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(socket_address(self.run_dir, index))
        return socket

    def _started_waiting(self) -> None:
        """A request thread serves one request at a time: it counts once in flight however many parts it sent."""
        pending = getattr(self._local, "pending", 0)
        self._local.pending = pending + 1
        if pending == 0:
            with self._lock:
                self._in_flight += 1

    def _done(self) -> None:
        self._local.pending -= 1
        if self._local.pending == 0:
            with self._lock:
                self._in_flight -= 1


class PendingScores:
    """One sent request; result() waits on the sending thread's own socket (the thread that submitted it)."""

    def __init__(self, client: EngineClient, socket: zmq.Socket, engine: EngineStatus, request_id: int,
                 counted: bool = True) -> None:
        self.client = client
        self.socket = socket
        self.engine = engine
        self.request_id = request_id
        self.sent_at = time.monotonic()
        self._settled = not counted  # an uncounted one has nothing to give back when it ends
        client._local.stash[request_id] = None  # awaited

    def result(self, timeout: float | None = None) -> BatchedResult:
        settled = self.reply(timeout)
        assert isinstance(settled, ScoreReply)
        settled.raise_error()
        metrics.channel_seconds.observe(max(0.0, time.monotonic() - self.sent_at - settled.queue_s
                                            - settled.compute_s))
        assert settled.scores is not None
        return BatchedResult(settled.scores, settled.queue_s, settled.compute_s)

    def reply(self, timeout: float | None = None) -> ScoreReply | ControlReply:
        """The engine's reply, unexamined; raises EngineLost when the engine stopped first, FutureTimeout when
        `timeout` passed first."""
        stash: dict[int, ScoreReply | ControlReply | None] = self.client._local.stash
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        try:
            while stash.get(self.request_id) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FutureTimeout()
                if self.socket.poll(int(min(left, CHECK_S) * 1000) + 1, zmq.POLLIN):
                    reply = unpack(self.socket.recv())
                    if isinstance(reply, (ScoreReply, ControlReply)) and reply.request_id in stash:
                        stash[reply.request_id] = reply
                else:
                    self._check_engine()
            settled = stash[self.request_id]
        finally:
            self.cancel()
        assert settled is not None
        return settled

    def _check_engine(self) -> None:
        now = self.client.board.read(self.engine.index)
        if now.pid != self.engine.pid or now.state in (EngineState.DEAD, EngineState.FAILED) \
                or (now.state == EngineState.READY and not now.serving) or not _running(now.pid):
            raise EngineLost(f"engine {self.engine.index} stopped before answering; it is being restarted, retry")

    def cancel(self) -> bool:
        """Stop waiting: a late reply is dropped (the engine drops queued parts once their deadline passes)."""
        self.client._local.stash.pop(self.request_id, None)
        if not self._settled:
            self._settled = True
            self.client._done()
        return True


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ModelQueue:
    """A multi-model endpoint's one model, as InferenceService sees its queue: the engines, with every request
    naming the model."""

    def __init__(self, client: EngineClient, name: str, generation: str = "") -> None:
        self.client = client
        self.name = name
        self.generation = generation
        self.max_queue_texts = client.max_queue_texts

    @property
    def alive(self) -> bool:
        return self.client.alive

    @property
    def queued_texts(self) -> int:
        return self.client.queued_texts

    def why_not_alive(self) -> str:
        return self.client.why_not_alive()

    def admit(self, texts: int) -> None:
        self.client.admit(texts)

    def submit(self, encoded: list[EncodedText], timeout_s: float, wait_for_room: bool = False,
               room: int | None = None) -> PendingScores:
        return self.client.submit(encoded, timeout_s, wait_for_room, room, model=self.name,
                                  generation=self.generation)
