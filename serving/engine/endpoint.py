"""The engine's side of the channel: one I/O thread listens on the engine's Unix socket, reads what the front ends
send, queues it in its model's batcher, and sends back what the batcher settles; a multi-model endpoint's loads and
unloads run on threads of their own and answer the same way.

Only the I/O thread writes to the front ends' connections. A request that finds its model idle runs on the I/O
thread and is answered there; replies settled on other threads (the batcher's) are queued for it, with one wake-up
for all that queue up meanwhile, and each connection gets its replies of a round in one write.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serving.board import Board, EngineState
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
    send_or_keep,
    unpack,
)
from serving.classifier import EncodedText
from serving.engine.models import EngineModels
from serving.errors import NotReady, ServingError

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often an idle I/O thread refreshes the board's heartbeat and checks for a stop
LINGER_S = 0.5  # a draining engine keeps answering (503) what front ends sent before they saw it draining
READ_BYTES = 1 << 18
FLUSH_AT_EXIT_S = 1.0  # how long a stopping engine waits for a slow front end to take its last replies
ACCEPT_PAUSE_S = 0.1  # out of descriptors: how long the listener rests (its queued connections wait meanwhile)


class Connection:
    """One front end's connection (its event loop's, or one of its threads'): what arrived of a message, and what
    the socket has not yet taken of the replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames = Frames()
        self.outbox = bytearray()
        self.closed = False


class Endpoint:
    """Serves `models` at `address` until stop(): then takes nothing new and ends once every request it took has
    its answer sent (or `drain_s` has passed)."""

    def __init__(self, models: EngineModels, address: str, board: Board, index: int, drain_s: float,
                 on_received: Callable[[int], None] | None = None, parent: int | None = None) -> None:
        self.models = models
        self.board = board
        self.index = index
        self.drain_s = drain_s
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)  # the socket of the engine this one replaces
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(address)
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self.selector.register(self._wake_reader, selectors.EVENT_READ)
        self._connections: set[Connection] = set()
        self._replies: collections.deque[tuple[Connection, bytes]] = collections.deque()  # settled on other threads
        self._woken = False  # a wake-up is on its way to the I/O thread for what is in _replies
        self._closed = False  # sockets closed: later hand-overs (settled after the drain gave up) are dropped
        self._accept_again_at = 0.0  # while the listener rests
        self._accept_failing = False
        self._in_flight = 0  # taken and not yet answered; touched by the I/O thread only
        self._stop = threading.Event()
        self._parent = parent if parent is not None else os.getppid()  # the supervisor, read before loading
        self._parts: dict[tuple, queue.SimpleQueue] = {}  # per sender and model: its requests' parts, in order
        self._parts_lock = threading.Lock()
        self._io_thread = 0
        self.on_received = on_received

    def stop(self) -> None:
        """Safe from a signal handler: the I/O thread notices within POLL_S."""
        self._stop.set()

    def serve(self) -> None:
        self._io_thread = threading.get_ident()
        drain_until = None
        drained_at = 0.0
        while True:
            arrived: list[tuple[Connection, bytes]] = []
            if self._accept_again_at and time.monotonic() >= self._accept_again_at:
                self._accept_again_at = 0.0
                self.selector.register(self.listener, selectors.EVENT_READ)
            for key, events in self.selector.select(POLL_S):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj is self._wake_reader:
                    self._take_wakeups()
                else:
                    if events & selectors.EVENT_WRITE:
                        self._flush(key.data)
                    if events & selectors.EVENT_READ:
                        arrived.extend(self._read(key.data))
            self._send_replies()
            if arrived:
                self._receive(arrived, refuse=drain_until is not None)
            self.board.set_queued(self.index, self.models.queued_texts)
            if drain_until is None and (self._stop.is_set() or os.getppid() != self._parent):
                drained_at = time.monotonic()
                drain_until = self._start_draining()
            if drain_until is not None and (self._in_flight == 0 and time.monotonic() > drained_at + LINGER_S
                                            or time.monotonic() > drain_until):
                break
        self._send_replies()
        if self._in_flight:
            log.warning("engine %d stops with %d requests unanswered after %.0f s", self.index, self._in_flight,
                        self.drain_s)
        self._close_all()

    def _start_draining(self) -> float:
        log.info("engine %d draining: %d requests in flight, %d texts queued", self.index, self._in_flight,
                 self.models.queued_texts)
        self.board.write(self.index, state=EngineState.STOPPING)
        threading.Thread(target=self.models.stop_all, args=(self.drain_s,), name="batcher-stop", daemon=True).start()
        return time.monotonic() + self.drain_s

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    continue  # that one connection failed (aborted by the front end, say)
                # out of descriptors or memory: the connection stays queued; rest rather than spin on it
                if not self._accept_failing:  # once per spell, not every rest
                    self._accept_failing = True
                    log.error("engine %d could not accept a connection (%s); trying again every %.1f s", self.index,
                              exc, ACCEPT_PAUSE_S)
                self.selector.unregister(self.listener)
                self._accept_again_at = time.monotonic() + ACCEPT_PAUSE_S
                return
            self._accept_failing = False
            sock.setblocking(False)
            connection = Connection(sock)
            self._connections.add(connection)
            self.selector.register(sock, selectors.EVENT_READ, connection)

    def _read(self, connection: Connection) -> list[tuple[Connection, bytes]]:
        """The messages that have arrived whole on a connection; a closed or broken one is let go."""
        messages: list[tuple[Connection, bytes]] = []
        while True:
            try:
                data = connection.sock.recv(READ_BYTES)
            except (BlockingIOError, InterruptedError):
                return messages
            except OSError:
                data = b""
            if not data:  # the front end is gone (restarted): nobody waits for its answers
                self._close(connection)
                return messages
            try:
                messages.extend((connection, payload) for payload in connection.frames.feed(data))
            except BrokenStream as exc:
                log.error("engine %d dropped a connection that sent %s", self.index, exc)
                self._close(connection)
                return messages
            if len(data) < READ_BYTES:
                return messages

    def _close(self, connection: Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self._connections.discard(connection)
        self.selector.unregister(connection.sock)
        connection.sock.close()

    def _close_all(self) -> None:
        """At the end: what the front ends have not yet taken gets a moment to go, then every socket closes."""
        self._closed = True  # hand-overs from now on are dropped; those before go with the rest
        self._send_replies()
        deadline = time.monotonic() + FLUSH_AT_EXIT_S
        for connection in list(self._connections):
            if connection.outbox:
                try:
                    connection.sock.settimeout(max(0.01, deadline - time.monotonic()))
                    connection.sock.sendall(connection.outbox)
                except OSError:
                    pass
            self._close(connection)
        self.selector.close()
        for sock in (self.listener, self._wake_reader, self._wake_writer):
            sock.close()

    def _receive(self, arrived: list[tuple[Connection, bytes]], refuse: bool) -> None:
        """Everything that has arrived; a lone request may run on this thread when the model is idle (no thread
        hand-off either way), several go to the batcher's loop to be batched."""
        for connection, payload in arrived:
            try:
                request = unpack(payload)
                if isinstance(request, ScoreRequest):
                    encoded = [EncodedText(f, n, False) for f, n in zip(request.features, request.lengths,
                                                                         strict=True)]
            except Exception:  # a message this engine cannot read (never expected: both ends are this package)
                log.exception("engine %d dropped a message it could not read", self.index)
                continue
            if isinstance(request, ControlRequest) and request.engine_pid == os.getpid():
                self._in_flight += 1
                if refuse:
                    self._hand_over(connection, failure_reply(request.request_id, NotReady(
                        "the engine is shutting down"), ControlReply))
                else:
                    threading.Thread(target=self._control, args=(connection, request), name=f"{request.op}-model",
                                     daemon=True).start()
                continue
            if not isinstance(request, ScoreRequest) or request.engine_pid != os.getpid():
                continue  # sent to the engine this one replaced; its sender has answered 503 already
            if self.on_received is not None:
                self.on_received(len(request.lengths))
            self._in_flight += 1
            if refuse:
                self._hand_over(connection, failure_reply(request.request_id, NotReady("the engine is shutting down")))
                continue
            if request.wait_for_room:  # waits for room in the queue: on the one thread that feeds parts, in order
                self._feed_part(connection, request, encoded)
            else:
                self._submit(connection, request, encoded, len(arrived) == 1)

    def _feed_part(self, connection: Connection, request: ScoreRequest, encoded: list[EncodedText]) -> None:
        """Parts of one request wait for room in order on a thread of their own, one per sending connection
        and model: the parts of requests from different front-end threads, or for different models, wait side by
        side, so one starved request holds up no other; a front end's event loop sends on one socket, so its large
        requests for one model take turns."""
        key = (connection, request.model, request.generation)
        with self._parts_lock:
            parts = self._parts.get(key)
            if parts is None:
                parts = self._parts[key] = queue.SimpleQueue()
                threading.Thread(target=self._feed_parts, args=(connection, key, parts), name="parts",
                                 daemon=True).start()
            parts.put((request, encoded))

    def _feed_parts(self, connection: Connection, key: tuple, parts: queue.SimpleQueue) -> None:
        while True:
            with self._parts_lock:
                if parts.empty():  # the request's last part is queued: this thread ends
                    del self._parts[key]
                    return
            request, encoded = parts.get()
            self._submit(connection, request, encoded, False)

    def _control(self, connection: Connection, request: ControlRequest) -> None:
        """A model's load or unload, off the I/O thread (the other models keep serving meanwhile)."""
        try:
            if request.op == "load":
                detail = self.models.load(request.name, Path(request.path), request.generation)
            elif request.op == "unload":
                detail = self.models.unload(request.name, self.drain_s, request.generation)
            else:
                raise ValueError(f"unknown operation {request.op!r}")
            reply = ControlReply(request.request_id, detail)
        except Exception as exc:
            if not isinstance(exc, ServingError):
                log.exception("engine %d could not %s model %s", self.index, request.op, request.name)
            reply = failure_reply(request.request_id, exc, ControlReply)
        self._hand_over(connection, reply)

    def _submit(self, connection: Connection, request: ScoreRequest, encoded: list[EncodedText], inline: bool) -> None:
        try:
            batcher = self.models.batcher(request.model, request.generation)  # 404 for a model not loaded here
            batcher.submit_calling(functools.partial(self._settled, connection, request.request_id), encoded,
                                   request.deadline - time.monotonic(), request.wait_for_room, request.room,
                                   inline=inline)
        except Exception as exc:
            self._hand_over(connection, failure_reply(request.request_id, exc))

    def _settled(self, connection: Connection, request_id: int, result: BatchedResult | None,
                 error: BaseException | None) -> None:
        if result is None:  # never settled with neither, but a request must always get an answer
            reply = failure_reply(request_id, error or RuntimeError("settled with neither scores nor an error"))
        else:
            reply = ScoreReply(request_id, result.scores, result.queue_s, result.compute_s)
        self._hand_over(connection, reply)

    def _hand_over(self, connection: Connection, reply: ScoreReply | ControlReply) -> None:
        """From any thread: the I/O thread writes to the connections, which it alone may use; others queue for it."""
        if threading.get_ident() == self._io_thread:
            self._in_flight -= 1
            self._send(connection, frame(pack(reply)))
            return
        if self._closed:  # settled after the drain gave up on it: nobody will send it
            return
        self._replies.append((connection, frame(pack(reply))))
        if not self._woken:  # one wake-up for whatever queues up before the I/O thread takes it
            self._woken = True
            # full: wake-ups are on their way already; closed: the engine stopped meanwhile
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")

    def _take_wakeups(self) -> None:
        """The wake-up bytes first, then the flag: a hand-over that came while they were read sent none (the flag
        was still up) and is taken with the rest below; one after this sends its own. The other order could read a
        byte sent after the flag went down and leave the flag up with no byte to come: every later reply would
        then wait for the next request or POLL_S."""
        with contextlib.suppress(BlockingIOError):
            while self._wake_reader.recv(4096):
                pass
        self._woken = False

    def _send_replies(self) -> None:
        """The replies settled on other threads, each connection's in one write; always after _take_wakeups."""
        if not self._replies:
            return
        by_connection: dict[Connection, list[bytes]] = {}
        while self._replies:
            connection, message = self._replies.popleft()
            self._in_flight -= 1
            by_connection.setdefault(connection, []).append(message)
        for connection, messages in by_connection.items():
            self._send(connection, b"".join(messages))

    def _send(self, connection: Connection, data: bytes) -> None:
        """As much as the socket takes now; the rest when it is writable again (the front end is reading)."""
        if connection.closed:  # the front end is gone (restarted): nobody waits for this answer
            return
        try:
            if send_or_keep(connection.sock, connection.outbox, data):
                self.selector.modify(connection.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, connection)
        except OSError:
            self._close(connection)

    def _flush(self, connection: Connection) -> None:
        if connection.closed:
            return
        try:
            if send_kept(connection.sock, connection.outbox):
                self.selector.modify(connection.sock, selectors.EVENT_READ, connection)
        except OSError:
            self._close(connection)
