"""The engine's side of the channel: one I/O thread owns the ROUTER socket, queues what arrives in its model's
batcher, and sends back what the batcher settles; a multi-model endpoint's loads and unloads run on threads of their
own and answer the same way.

Replies are settled on the batcher's thread; ZeroMQ sockets belong to one thread, so each settling thread hands its
replies to the I/O thread over an in-process PUSH socket of its own.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import cast

import zmq

from serving.board import Board, EngineState
from serving.channel import ControlReply, ControlRequest, ScoreReply, ScoreRequest, failure_reply, pack, unpack
from serving.classifier import EncodedText
from serving.engine.batching import BatchedResult
from serving.engine.models import EngineModels
from serving.errors import NotReady, ServingError

log = logging.getLogger(__name__)

REPLIES = "inproc://replies"
POLL_MS = 50  # how often an idle I/O thread refreshes the board's heartbeat and checks for a stop
LINGER_S = 0.5  # a draining engine keeps answering (503) what front ends sent before they saw it draining


class Endpoint:
    """Serves `models` at `address` until stop(): then takes nothing new and ends once every request it took has
    its answer sent (or `drain_s` has passed)."""

    def __init__(self, models: EngineModels, address: str, board: Board, index: int, drain_s: float,
                 on_received: Callable[[int], None] | None = None, parent: int | None = None) -> None:
        self.models = models
        self.board = board
        self.index = index
        self.drain_s = drain_s
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 1000)
        self.router.bind(address)
        self.replies = self.context.socket(zmq.PULL)
        self.replies.setsockopt(zmq.RCVHWM, 0)  # never block a settling thread (it may hold the batcher's lock)
        self.replies.bind(REPLIES)
        self._local = threading.local()
        self._in_flight = 0  # taken and not yet answered; touched by the I/O thread only
        self._stop = threading.Event()
        self._parent = parent if parent is not None else os.getppid()  # the supervisor, read before loading
        self._parts: dict[tuple, queue.SimpleQueue] = {}  # per sender and model: its requests' parts, in order
        self._parts_lock = threading.Lock()
        self._io_thread = 0
        self.on_received = on_received

    def stop(self) -> None:
        """Safe from a signal handler: the I/O thread notices within POLL_MS."""
        self._stop.set()

    def serve(self) -> None:
        self._io_thread = threading.get_ident()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.replies, zmq.POLLIN)
        drain_until = None
        drained_at = 0.0
        while True:
            events = dict(poller.poll(POLL_MS))
            if self.replies in events:
                self._send_replies()
            if self.router in events:
                self._receive(refuse=drain_until is not None)
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
        self.context.destroy(linger=1000)  # the settling threads' PUSH sockets too

    def _start_draining(self) -> float:
        log.info("engine %d draining: %d requests in flight, %d texts queued", self.index, self._in_flight,
                 self.models.queued_texts)
        self.board.write(self.index, state=EngineState.STOPPING)
        threading.Thread(target=self.models.stop_all, args=(self.drain_s,), name="batcher-stop", daemon=True).start()
        return time.monotonic() + self.drain_s

    def _receive(self, refuse: bool) -> None:
        """Everything that has arrived; a lone request may run on this thread when the model is idle (no thread
        hand-off either way), several go to the batcher's loop to be batched."""
        arrived = []
        try:
            while _readable(self.router):  # asking is cheaper than a raised zmq.Again
                arrived.append(self.router.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:  # not expected after EVENTS said readable; never worth the I/O thread
            pass
        for frames in arrived:
            try:
                identity, payload = frames
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
                    self._hand_over(identity, failure_reply(request.request_id, NotReady(
                        "the engine is shutting down"), ControlReply))
                else:
                    threading.Thread(target=self._control, args=(identity, request), name=f"{request.op}-model",
                                     daemon=True).start()
                continue
            if not isinstance(request, ScoreRequest) or request.engine_pid != os.getpid():
                continue  # sent to the engine this one replaced; its sender has answered 503 already
            if self.on_received is not None:
                self.on_received(len(request.lengths))
            self._in_flight += 1
            if refuse:
                self._hand_over(identity, failure_reply(request.request_id, NotReady("the engine is shutting down")))
                continue
            if request.wait_for_room:  # waits for room in the queue: on the one thread that feeds parts, in order
                self._feed_part(identity, request, encoded)
            else:
                self._submit(identity, request, encoded, len(arrived) == 1)

    def _feed_part(self, identity: bytes, request: ScoreRequest, encoded: list[EncodedText]) -> None:
        """Parts of one request wait for room in order on a thread of their own, one per sending socket (identity)
        and model: the parts of requests from different front-end threads, or for different models, wait side by
        side, so one starved request holds up no other; a front end's event loop sends on one socket, so its large
        requests for one model take turns."""
        key = (identity, request.model, request.generation)
        with self._parts_lock:
            parts = self._parts.get(key)
            if parts is None:
                parts = self._parts[key] = queue.SimpleQueue()
                threading.Thread(target=self._feed_parts, args=(identity, key, parts), name="parts",
                                 daemon=True).start()
            parts.put((request, encoded))

    def _feed_parts(self, identity: bytes, key: tuple, parts: queue.SimpleQueue) -> None:
        while True:
            with self._parts_lock:
                if parts.empty():  # the request's last part is queued: this thread ends
                    del self._parts[key]
                    return
            request, encoded = parts.get()
            self._submit(identity, request, encoded, False)

    def _control(self, identity: bytes, request: ControlRequest) -> None:
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
        self._hand_over(identity, reply)

    def _submit(self, identity: bytes, request: ScoreRequest, encoded: list[EncodedText], inline: bool) -> None:
        try:
            batcher = self.models.batcher(request.model, request.generation)  # 404 for a model not loaded here
            future = batcher.submit(encoded, request.deadline - time.monotonic(), request.wait_for_room, request.room,
                                    inline=inline)
        except Exception as exc:
            self._hand_over(identity, failure_reply(request.request_id, exc))
            return
        future.add_done_callback(lambda done: self._settled(identity, request.request_id, done))

    def _settled(self, identity: bytes, request_id: int, future: Future) -> None:
        error = future.exception() if not future.cancelled() else NotReady("request cancelled")
        if error is not None:
            reply = failure_reply(request_id, error)
        else:
            result: BatchedResult = future.result()
            reply = ScoreReply(request_id, result.scores, result.queue_s, result.compute_s)
        self._hand_over(identity, reply)

    def _hand_over(self, identity: bytes, reply: ScoreReply | ControlReply) -> None:
        """From any thread: the I/O thread sends on the ROUTER, which it alone may use; others hand it over."""
        if threading.get_ident() == self._io_thread:
            self._in_flight -= 1
            self._send(identity, pack(reply))
            return
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._local.push = self.context.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 0)
            push.connect(REPLIES)
        push.send_multipart([identity, pack(reply)])

    def _send_replies(self) -> None:
        while _readable(self.replies):
            try:
                identity, payload = self.replies.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:  # not expected after EVENTS said readable
                return
            self._in_flight -= 1
            self._send(identity, payload)

    def _send(self, identity: bytes, payload: bytes) -> None:
        try:
            self.router.send_multipart([identity, payload], zmq.NOBLOCK)
        except zmq.ZMQError:  # the front end is gone (restarted): nobody waits for this answer
            pass


def _readable(socket: zmq.Socket) -> bool:
    return bool(cast(int, socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
