"""The front end's view of the engines: admission at the door, choosing an engine, and waiting for its answer.

EngineClient stands where the local Batcher stands for InferenceService (admit, submit -> a pending result,
queued_texts, alive), so the request path above it is the same in both layouts. The front end's event loop sends
with submit_on_loop and awaits the reply (LoopChannel); a thread sends with submit on a connection of its own and
waits for its own replies on it: no thread hand-off on the way in or out either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from serving import metrics
from serving.board import Board, EngineState, EngineStatus, error_path, socket_address
from serving.channel import (
    BatchedResult,
    BrokenStream,
    ControlReply,
    ControlRequest,
    Frames,
    ScoreReply,
    ScoreRequest,
    failure_reply,
    frame,
    pack,
    send_kept,
    unpack,
)
from serving.classifier import EncodedText
from serving.errors import NotReady, QueueFull, RequestTimeout, ServingError

log = logging.getLogger(__name__)

CHECK_S = 0.2  # while waiting for a reply, how often to look whether its engine is still the one it was sent to
READ_BYTES = 1 << 18
CONNECT_S = 2.0  # bounds a connect (a Unix socket's is immediate: refused, or queued for the engine to accept)
SEND_S = 10.0  # a thread's send to an engine that has stopped reading gives up after this long (503)


class EngineLost(NotReady):
    code = "engine_restarting"

    @classmethod
    def not_taking(cls, index: int) -> EngineLost:
        return cls(f"engine {index} is not taking requests; retry")

    @classmethod
    def stopped(cls, index: int) -> EngineLost:
        return cls(f"engine {index} stopped before answering; it is being restarted, retry")


class EngineClient:
    """Talks to every engine of the server at `run_dir`; at most `max_in_flight` requests of this process wait
    on engines at once (more answer 429 at the door, before tokenising)."""

    def __init__(self, run_dir: Path, max_queue_texts: int, max_in_flight: int) -> None:
        self.run_dir = run_dir
        self.board = Board.open(run_dir)
        self.max_queue_texts = max_queue_texts
        self.max_in_flight = max_in_flight
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._turn = itertools.count()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._loop: LoopChannel | None = None  # the event loop's sockets, once it has sent

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
        engine, request = self._addressed(encoded, timeout_s, wait_for_room, room, model, generation)
        link = self._send(engine, request)
        self._started_waiting()
        return PendingScores(self, link, engine, request.request_id)

    def submit_on_loop(self, encoded: list[EncodedText], timeout_s: float, wait_for_room: bool = False,
                       room: int | None = None, model: str = "", generation: str = "") -> LoopPending:
        """submit() from the front end's event loop (called on it): the reply is awaited, no thread waits."""
        if self._loop is None or self._loop.loop is not asyncio.get_running_loop():  # (tests run several loops)
            self._loop = LoopChannel(self)
        engine, request = self._addressed(encoded, timeout_s, wait_for_room, room, model, generation)
        return self._loop.send(engine, request)

    def _addressed(self, encoded: list[EncodedText], timeout_s: float, wait_for_room: bool, room: int | None,
                   model: str, generation: str) -> tuple[EngineStatus, ScoreRequest]:
        """The engine to send to (the shortest queue, ties taken in turn) and the request for it."""
        ready = self._ready()
        if not ready:
            raise NotReady(self.why_not_alive())
        turn = next(self._turn)
        engine = min(ready, key=lambda s: (s.queued_texts, (s.index - turn) % len(ready)))
        if not wait_for_room and engine.queued_texts + len(encoded) > self.max_queue_texts:
            raise QueueFull(f"queue is full ({engine.queued_texts} texts waiting, limit {self.max_queue_texts}); "
                            "retry later")
        return engine, ScoreRequest(next(self._ids), engine.pid, time.monotonic() + timeout_s,
                                    [e.features for e in encoded], [e.length for e in encoded], wait_for_room,
                                    room, model, generation)

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
                try:
                    link = self._send(engine, request)
                except EngineLost as exc:
                    replies.append(failure_reply(request.request_id, exc, ControlReply))
                    continue
                # not counted in flight: a load may take minutes, and the cap is there for invocations
                pending.append(PendingScores(self, link, engine, request.request_id, counted=False))
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

    def _send(self, engine: EngineStatus, request: ScoreRequest | ControlRequest) -> ThreadLink:
        """On this thread's own connection to the engine (made again for a restarted one)."""
        links = getattr(self._local, "links", None)
        if links is None:
            links = self._local.links = {}
            self._local.stash = {}  # replies received for another pending request of this thread
        link = links.get(engine.index)
        if link is None or link.pid != engine.pid or link.closed:
            if link is not None:
                link.close()
            link = links[engine.index] = ThreadLink(connect(self.run_dir, engine), engine)
        try:
            link.sock.settimeout(SEND_S)
            link.sock.sendall(frame(pack(request)))
        except OSError as exc:  # gone, or not reading for SEND_S
            link.close()
            raise EngineLost.not_taking(engine.index) from exc
        return link

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

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """One request of the event loop waits on the engines: it counts once in flight however many parts it
        sent (a request thread counts itself in submit())."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1


def connect(run_dir: Path, engine: EngineStatus) -> socket.socket:
    """A connection to the engine's socket; EngineLost (503) when it is not listening."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_S)
        sock.connect(socket_address(run_dir, engine.index))
    except OSError as exc:
        sock.close()
        raise EngineLost.not_taking(engine.index) from exc
    return sock


class EngineLink:
    """A connection to one engine generation (its pid), and what has arrived of its next message."""

    def __init__(self, sock: socket.socket, engine: EngineStatus) -> None:
        self.sock = sock
        self.index = engine.index
        self.pid = engine.pid
        self.frames = Frames()
        self.closed = False

    def replies(self, data: bytes) -> list:
        """The records `data` completes; BrokenStream when the stream is out of step. An unreadable one is logged
        and left out (never expected: both ends are this package), the others still count."""
        records = []
        for payload in self.frames.feed(data):
            try:
                records.append(unpack(payload))
            except Exception:
                log.exception("dropped an unreadable reply from an engine")
        return records


class ThreadLink(EngineLink):
    """A thread's connection, read with a timeout."""

    def receive(self, timeout: float) -> list | None:
        """The records that arrived within `timeout` (None: none did); EngineLost once the engine has gone."""
        try:
            self.sock.settimeout(max(timeout, 0.001))  # 0 would make the socket non-blocking
            data = self.sock.recv(READ_BYTES)
        except TimeoutError:
            return None
        except OSError:
            data = b""
        try:
            if not data:
                raise BrokenStream("the end of the stream")
            return self.replies(data)
        except BrokenStream as exc:
            self.close()
            raise EngineLost.stopped(self.index) from exc

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class PendingScores:
    """One sent request; result() waits on the sending thread's own connection (the thread that submitted it)."""

    def __init__(self, client: EngineClient, link: ThreadLink, engine: EngineStatus, request_id: int,
                 counted: bool = True) -> None:
        self.client = client
        self.link = link
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
                replies = self.link.receive(min(left, CHECK_S))
                if replies is None:
                    self._check_engine()
                for reply in replies or ():
                    if isinstance(reply, (ScoreReply, ControlReply)) and reply.request_id in stash:
                        stash[reply.request_id] = reply
            settled = stash[self.request_id]
        finally:
            self.cancel()
        assert settled is not None
        return settled

    def _check_engine(self) -> None:
        if _lost(self.client.board, self.engine):
            raise EngineLost.stopped(self.engine.index)

    def cancel(self) -> bool:
        """Stop waiting: a late reply is dropped (the engine drops queued parts once their deadline passes)."""
        self.client._local.stash.pop(self.request_id, None)
        if not self._settled:
            self._settled = True
            self.client._done()
        return True


class LoopLink(EngineLink):
    """The event loop's connection, and what the socket has not yet taken."""

    def __init__(self, sock: socket.socket, engine: EngineStatus) -> None:
        super().__init__(sock, engine)
        self.outbox = bytearray()
        self.flushing = False  # a flush is due: at the end of this pass, or once the socket has room
        self.watched = False  # the loop watches the socket for room


class LoopChannel:
    """The engines as an event loop sees them: one connection per engine for the whole loop, read when the loop sees
    it readable, each reply settling its request's future; an engine's connection that ends fails the waits on it
    at once, and a watch those on an engine that hangs. Used only on the loop that first sent (a front end runs one).
    Plain non-blocking sockets on the loop's own selector: no thread between the loop and the engine."""

    def __init__(self, client: EngineClient) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.links: dict[int, LoopLink] = {}
        self.waiting: dict[int, LoopPending] = {}
        self.watch = self.loop.create_task(self._watch())  # held: the loop keeps only a weak reference

    def send(self, engine: EngineStatus, request: ScoreRequest) -> LoopPending:
        link = self.links.get(engine.index)
        if link is None or link.pid != engine.pid or link.closed:
            if link is not None:  # the engine was replaced: what waits on its predecessor is lost
                self._drop(link)
            sock = connect(self.client.run_dir, engine)
            sock.setblocking(False)
            link = self.links[engine.index] = LoopLink(sock, engine)
            self.loop.add_reader(sock.fileno(), self._receive, link)
        self._write(link, frame(pack(request)))
        pending = LoopPending(self, engine, request.request_id)
        self.waiting[request.request_id] = pending
        return pending

    def _write(self, link: LoopLink, data: bytes) -> None:
        """Queued for one write at the end of this pass of the loop: every request the pass sends to the engine
        goes in it, and the engine wakes once for them all (a write and a wake-up per request cost both processes
        more than the rest of the channel)."""
        link.outbox += data
        if not link.flushing:
            link.flushing = True
            self.loop.call_soon(self._flush, link)

    def _flush(self, link: LoopLink) -> None:
        """As much as the socket takes now; the rest when the loop sees it writable (the engine reads meanwhile).
        A socket that fails fails the waits on it."""
        if link.closed:
            return
        try:
            sent_all = send_kept(link.sock, link.outbox)
        except OSError:
            self._drop(link)
            return
        if sent_all:
            link.flushing = False
            if link.watched:
                link.watched = False
                self.loop.remove_writer(link.sock.fileno())
        elif not link.watched:
            link.watched = True
            self.loop.add_writer(link.sock.fileno(), self._flush, link)

    def _receive(self, link: LoopLink) -> None:
        while not link.closed:
            try:
                data = link.sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the engine has gone: it is being restarted
                self._drop(link)
                return
            try:
                replies = link.replies(data)
            except BrokenStream:
                log.exception("dropped the connection to engine %d", link.index)
                self._drop(link)
                return
            for reply in replies:
                pending = self.waiting.get(reply.request_id)
                if pending is not None and isinstance(reply, ScoreReply) and not pending.future.done():
                    pending.future.set_result(reply)
            if len(data) < READ_BYTES:
                return

    def _drop(self, link: LoopLink) -> None:
        """Close the connection and fail what waits on it: its engine will not answer on another."""
        if link.closed:
            return
        link.closed = True
        self.loop.remove_reader(link.sock.fileno())
        self.loop.remove_writer(link.sock.fileno())
        link.sock.close()
        if self.links.get(link.index) is link:
            del self.links[link.index]
        for pending in list(self.waiting.values()):
            if pending.engine.index == link.index and pending.engine.pid == link.pid and not pending.future.done():
                pending.future.set_exception(EngineLost.stopped(link.index))

    async def _watch(self) -> None:
        """Waits on an engine that stopped end at once with EngineLost (503), as a waiting thread's do."""
        while True:
            await asyncio.sleep(CHECK_S)
            try:
                lost: dict[tuple[int, int], bool] = {}
                for pending in list(self.waiting.values()):
                    engine = pending.engine
                    key = (engine.index, engine.pid)
                    if key not in lost:
                        lost[key] = _lost(self.client.board, engine)
                    if lost[key] and not pending.future.done():
                        pending.future.set_exception(EngineLost.stopped(engine.index))
            except Exception:  # never end the watch: a wait on a dead engine would last until its deadline
                log.exception("could not check the engines")


class LoopPending:
    """One request sent from the event loop; `await result(timeout)` gives its scores."""

    def __init__(self, channel: LoopChannel, engine: EngineStatus, request_id: int) -> None:
        self.channel = channel
        self.engine = engine
        self.request_id = request_id
        self.sent_at = time.monotonic()
        self.future: asyncio.Future[ScoreReply] = asyncio.get_running_loop().create_future()

    async def result(self, timeout: float) -> BatchedResult:
        """Raises TimeoutError when `timeout` passes first, EngineLost when the engine stopped first."""
        # a timer of its own rather than asyncio.wait_for, which (Python 3.11) wraps the wait in a second future
        expiry = self.future.get_loop().call_later(timeout, self._expire)
        try:
            settled = await self.future
        finally:
            expiry.cancel()
            self.cancel()
        settled.raise_error()
        metrics.channel_seconds.observe(max(0.0, time.monotonic() - self.sent_at - settled.queue_s
                                            - settled.compute_s))
        assert settled.scores is not None
        return BatchedResult(settled.scores, settled.queue_s, settled.compute_s)

    def _expire(self) -> None:
        if not self.future.done():
            self.future.set_exception(TimeoutError())

    def cancel(self) -> None:
        """Stop waiting: a late reply is dropped (the engine drops queued parts once their deadline passes)."""
        self.channel.waiting.pop(self.request_id, None)
        if not self.future.done():
            self.future.cancel()
        elif not self.future.cancelled():
            self.future.exception()  # seen: an engine's loss set on a part nobody awaits is not logged as lost


def _lost(board: Board, engine: EngineStatus) -> bool:
    """Whether the engine a request was sent to has stopped (or been replaced) since."""
    now = board.read(engine.index)
    return (now.pid != engine.pid or now.state in (EngineState.DEAD, EngineState.FAILED)
            or (now.state == EngineState.READY and not now.serving) or not _running(now.pid))


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

    def waiting(self) -> contextlib.AbstractContextManager[None]:
        return self.client.waiting()

    def submit_on_loop(self, encoded: list[EncodedText], timeout_s: float, wait_for_room: bool = False,
                       room: int | None = None) -> LoopPending:
        return self.client.submit_on_loop(encoded, timeout_s, wait_for_room, room, model=self.name,
                                          generation=self.generation)
