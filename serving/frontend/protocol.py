"""The HTTP/1.1 protocol each front end's uvicorn runs: uvicorn's httptools protocol with a bound on a request's head,
writing once per pass of the event loop.

llhttp reads a request line, headers and a chunked body's trailers of any length, and httptools and uvicorn keep
them whole until they end, so one client could make a front end hold an unbounded head. Here what is read while a
head (or trailer) is unfinished is counted, and the parser is fed no more than the bound allows: past
MAX_HEAD_BYTES the answer is 431 with the JSON error body every other refusal has, and the connection closes
(nothing after a cut head can be read in step). Bodies are bounded by the app (the payload limit).

uvicorn writes a response's head when the app starts the response and its body apart: two sends, two segments, and
a client that wakes for each. What the connection writes during one pass of the loop goes out in one write at the
end of it instead (OneWritePerPass).
"""

from __future__ import annotations

import asyncio
from typing import cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from serving.frontend.direct import error_body

# request line and headers: far above what SageMaker forwards (custom attributes are at most 1 KiB) and what common
# clients send, far below what would cost a front end memory
MAX_HEAD_BYTES = 64 * 1024
LINGER_S = 2.0  # after a refusal, how long the client may go on sending before the connection is cut
HOLD_BYTES = 64 * 1024  # a connection's writes held for the end of the pass: past this, they go at once


class OneWritePerPass:
    """A connection's transport whose writes made during one pass of the event loop go to the socket as one, at the
    end of the pass (at once when HOLD_BYTES are held: a large body does not wait, and flow control sees it); the
    rest is the transport's own. A close, an end of writing, and the client's end of sending (after which uvloop
    closes the transport itself: see BoundedHeadProtocol.eof_received) send what is held first. What is held when
    the transport closed meanwhile (the connection was lost) is dropped, as the transport would drop it."""

    __slots__ = ("transport", "loop", "held", "held_bytes", "ended")

    def __init__(self, transport, loop) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        self.loop = loop
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.ended = False  # write_eof() was called: no write may follow, as on the transport

    def write(self, data) -> None:  # type: ignore[no-untyped-def]
        if self.ended:
            raise RuntimeError("cannot write after write_eof()")
        if not data:
            return
        piece = data if isinstance(data, bytes) else bytes(data)  # a buffer may change before the pass ends
        self.held.append(piece)
        self.held_bytes += len(piece)
        if self.held_bytes >= HOLD_BYTES:
            self.flush()
        elif len(self.held) == 1:  # the first piece of this pass: the end of the pass sends it
            self.loop.call_soon(self.flush)

    def writelines(self, pieces) -> None:  # type: ignore[no-untyped-def]
        for data in pieces:
            self.write(data)

    def flush(self) -> None:
        if not self.held:
            return
        held, self.held, self.held_bytes = self.held, [], 0
        if not self.transport.is_closing():
            self.transport.writelines(held)  # uvloop sends the pieces in one writev, without joining them first

    def write_eof(self) -> None:
        self.flush()
        self.ended = True
        self.transport.write_eof()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.held, self.held_bytes = [], 0
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + self.held_bytes

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.transport, name)


class BoundedHeadProtocol(HttpToolsProtocol):
    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.writes = OneWritePerPass(transport, self.loop)
        super().connection_made(cast(asyncio.Transport, self.writes))
        self.head_bytes = 0
        self.reading_head = True  # a connection starts with a request's head
        self.refused = False  # a head was refused: what arrives is dropped until the connection closes
        self.running: RequestResponseCycle | None = None  # the request being answered (self.cycle may be queued)
        self.answer_before_close: RequestResponseCycle | None = None  # after a refused head, the last answered

    def data_received(self, data: bytes) -> None:
        """While a head is unfinished the parser gets at most what is left of the bound, so a read that carries a
        head and a large body (or several pipelined requests) is not counted whole. What follows the end of a
        request in the same piece is not counted: a head is held to the bound plus one piece."""
        if self.refused:
            return
        while self.reading_head and self.head_bytes + len(data) > MAX_HEAD_BYTES:
            room = MAX_HEAD_BYTES - self.head_bytes
            piece, data = data[:room], data[room:]
            self.head_bytes += len(piece)
            if piece:
                super().data_received(piece)
                if self.transport.is_closing():  # the parser refused it (uvicorn answered 400)
                    return
            if self.reading_head and self.head_bytes >= MAX_HEAD_BYTES:
                self._refuse_head()
                return
        if self.reading_head:
            self.head_bytes += len(data)
        if data:
            super().data_received(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol allows True
        """The client has finished sending. HTTP lets a client half-close once its request is sent, and uvicorn
        would close at once, losing the answer: when every request read is whole, the connection stays open for
        writing (True) and closes once they are answered (a client that closed for good holds its connection until
        then, and its answer goes nowhere, as it would to one that closed a moment later). Otherwise (a body cut
        short, nothing to answer) uvloop closes the transport after this, not through OneWritePerPass: an answer
        written in this pass goes first."""
        self.writes.flush()
        if self.transport.is_closing():
            return None
        # the last request to answer: after a refused head, the one answered before the connection closes
        cycle: RequestResponseCycle | None = self.answer_before_close if self.refused else self.cycle
        if cycle is None or cycle.more_body or cycle.response_complete:
            return None
        cycle.keep_alive = False  # uvicorn closes after its answer
        return True

    def on_headers_complete(self) -> None:
        self._body_next()
        super().on_headers_complete()

    def on_chunk_header(self) -> None:
        """A chunk's size line was read: its data follows, or for the last chunk the trailers (a head of sorts)."""
        self.reading_head = True

    def on_body(self, body: bytes) -> None:
        self._body_next()
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_head = True  # the next request on the connection (keep-alive, pipelining)
        self.head_bytes = 0

    def _body_next(self) -> None:
        self.reading_head = False
        self.head_bytes = 0

    def _start_asgi_task(self, cycle, app) -> None:  # type: ignore[no-untyped-def]
        self.running = cycle
        super()._start_asgi_task(cycle, app)

    def _refuse_head(self) -> None:
        """431 when nothing else is being answered on the connection; otherwise what is under way is answered (a
        431 now would be read as its answer) and the connection closes after it, with no answer for this head."""
        self.refused = True  # from now on what arrives is read and dropped
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is not None and cycle.more_body:  # the trailers of `cycle`: it will never be answered in full
            queued = [entry for entry in self.pipeline if entry[0] is cycle]
            if queued:  # not started: dropped, and the request before it is the last answered
                self.pipeline.remove(queued[0])
                cycle = self.pipeline[0][0] if self.pipeline else self.running
            elif cycle.response_complete:  # answered already (an early 413, say): nothing to add
                self._close_after_answers()
                return
            elif not cycle.response_started:  # its app waits for the rest of its body: this is its answer
                cycle = None
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # uvicorn closes once it is answered
            self.answer_before_close = cycle
            # and what arrives meanwhile is read and dropped, whatever uvicorn paused reading for: a close with
            # unread input would send a reset, which can cut that answer short
            self.flow.resume_reading()
            return
        body = error_body("request_header_fields_too_large",
                          f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes")
        self.transport.write(b"".join([
            STATUS_LINE[431], b"content-type: application/json\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n", body]))
        self._close_after_answers()

    def _close_after_answers(self) -> None:
        """Close without a reset: a socket closed with unread input sends one, and the client may lose the answer
        in flight. Write side first; what the client still sends is read and dropped until it closes (eof_received
        then lets the transport close) or LINGER_S passes."""
        if self.transport.is_closing():
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()
