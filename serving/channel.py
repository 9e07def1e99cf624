"""The channel between front ends and engines: the records that cross it and how they are framed.

Unix-domain stream sockets in the server's private run folder: each engine listens on one; a front end's event loop
connects once per engine for all its requests, and any thread that talks to the engines (a model load, a test) once
of its own. Each message is its length (4 bytes) and then the record. Plain sockets, read on the event loop's own
selector and the engine's, carry a message with no thread between the two ends: ZeroMQ, which we used before, hands
every message to an I/O thread on each side, two thread wake-ups each way per request (BENCHMARKS.md). A restarted
engine listens at the same path; a front end sees the old connection end and connects again. Records are pickled:
both ends are this package, and the socket folder is readable by the server's own user only.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving import errors

REQUEST, REPLY, CONTROL, CONTROL_REPLY = 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class BatchedResult:
    """A request's scores in input order, with the longest its texts waited and computed (in the batcher)."""

    scores: np.ndarray
    queue_s: float
    compute_s: float


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """One request's (or one part's) encoded texts for one engine generation (its pid)."""

    request_id: int
    engine_pid: int  # a restarted engine (a new pid) drops what was sent to its predecessor
    deadline: float  # time.monotonic(), which is host-wide
    features: list[Any]  # EncodedText.features per text
    lengths: list[int]
    wait_for_room: bool = False
    room: int | None = None
    model: str = ""  # a multi-model endpoint's model name; "" is the engine's one model
    generation: str = ""  # which load of that name tokenised the texts (the engine refuses another's)


@dataclass(frozen=True, slots=True)
class ScoreReply:
    """Scores in input order with the engine's timings, or the error that stopped the request."""

    request_id: int
    scores: np.ndarray | None = None
    queue_s: float = 0.0
    compute_s: float = 0.0
    error_kind: str = ""  # a serving.errors class name; anything else is an internal error
    error_message: str = ""

    def raise_error(self) -> None:
        _raise(self.error_kind, self.error_message)


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """Load or unload one model of a multi-model endpoint (op "load" or "unload"); `path` is its folder."""

    request_id: int
    engine_pid: int
    op: str
    name: str
    path: str = ""
    generation: str = ""  # the catalog entry's: which load of the name this is about


@dataclass(frozen=True, slots=True)
class ControlReply:
    """Done (with what the engine knows of the model: device, backend, memory), or the error that stopped it."""

    request_id: int
    detail: dict | None = None
    error_kind: str = ""
    error_message: str = ""

    def raise_error(self) -> None:
        _raise(self.error_kind, self.error_message)


def _raise(error_kind: str, message: str) -> None:
    if not error_kind:
        return
    kind = getattr(errors, error_kind, None)
    if isinstance(kind, type) and issubclass(kind, errors.ServingError):
        raise kind(message)
    raise RuntimeError(f"engine error: {message}")


def failure_reply(request_id: int, exc: BaseException, kind: type = ScoreReply):
    """`kind` ScoreReply or ControlReply, carrying `exc` by the name of its nearest serving.errors class (a
    subclass defined elsewhere, the front end's EngineLost say, travels as its base, so it keeps its status)."""
    if isinstance(exc, errors.ServingError):
        known = next(k for k in type(exc).__mro__ if getattr(errors, k.__name__, None) is k)
        return kind(request_id, error_kind=known.__name__, error_message=exc.message)
    return kind(request_id, error_kind="internal", error_message=f"{type(exc).__name__}: {exc}")


Record = ScoreRequest | ScoreReply | ControlRequest | ControlReply
LENGTH = struct.Struct("<I")
MAX_MESSAGE = 1 << 30  # bytes: far above the largest request (the payload limit); a longer length is a broken stream


class BrokenStream(Exception):
    """The other end sent a length no message of ours has: nothing after it can be read in step."""


def frame(payload: bytes) -> bytes:
    return LENGTH.pack(len(payload)) + payload


def send_or_keep(sock, outbox: bytearray, data: bytes) -> bool:
    """Send what a non-blocking socket takes now and keep the rest in `outbox`, behind what it holds already (the
    stream stays in order). True when the outbox has just started holding something: the caller then watches the
    socket for room and calls send_kept. OSError: the other end is gone."""
    if outbox:
        outbox += data
        return False
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    if sent == len(data):
        return False
    outbox += data[sent:]
    return True


def send_kept(sock, outbox: bytearray) -> bool:
    """Send what the socket takes of `outbox`; True once it is empty (stop watching). OSError: the other end is
    gone."""
    try:
        sent = sock.send(outbox)
    except (BlockingIOError, InterruptedError):
        return False
    del outbox[:sent]
    return not outbox


class Frames:
    """Messages out of a byte stream, whatever pieces it arrives in."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self.buffer
        buffer += data
        messages, start, size = [], 0, len(buffer)
        while size - start >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer, start)
            if length > MAX_MESSAGE:
                raise BrokenStream(f"a message of {length} bytes")
            end = start + LENGTH.size + length
            if end > size:
                break
            messages.append(bytes(buffer[start + LENGTH.size : end]))
            start = end
        if start:
            del buffer[:start]
        return messages


def pack(record: Record) -> bytes:
    """Records travel as tuples of plain values, arrays as raw bytes: pickling the dataclasses and arrays
    themselves cost ten times as much per message."""
    if isinstance(record, ScoreRequest):
        arrays = bool(record.features) and all(isinstance(f, np.ndarray) for f in record.features)
        features = [f.astype(np.int32).tobytes() for f in record.features] if arrays else record.features
        plain: tuple = (REQUEST, record.request_id, record.engine_pid, record.deadline, arrays, features,
                        record.lengths, record.wait_for_room, record.room, record.model, record.generation)
    elif isinstance(record, ControlRequest):
        plain = (CONTROL, record.request_id, record.engine_pid, record.op, record.name, record.path,
                 record.generation)
    elif isinstance(record, ControlReply):
        plain = (CONTROL_REPLY, record.request_id, record.detail, record.error_kind, record.error_message)
    else:
        scores = record.scores
        shape = () if scores is None else scores.shape
        data = b"" if scores is None else np.ascontiguousarray(scores, np.float32).tobytes()
        plain = (REPLY, record.request_id, shape, data, record.queue_s, record.compute_s, record.error_kind,
                 record.error_message)
    return pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(payload: bytes) -> Record:
    plain = pickle.loads(payload)
    if plain[0] == REQUEST:
        _, request_id, engine_pid, deadline, arrays, features, lengths, wait_for_room, room, model, generation = plain
        if arrays:
            features = [np.frombuffer(f, np.int32).astype(np.int64) for f in features]
        return ScoreRequest(request_id, engine_pid, deadline, features, lengths, wait_for_room, room, model,
                            generation)
    if plain[0] == CONTROL:
        return ControlRequest(*plain[1:])
    if plain[0] == CONTROL_REPLY:
        return ControlReply(*plain[1:])
    _, request_id, shape, data, queue_s, compute_s, error_kind, error_message = plain
    scores = np.frombuffer(data, np.float32).reshape(shape) if shape else None
    return ScoreReply(request_id, scores, queue_s, compute_s, error_kind, error_message)
