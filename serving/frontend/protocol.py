"""The HTTP/1.1 protocol each front end's uvicorn runs: uvicorn's httptools protocol with a bound on a request's head.

llhttp reads a request line, headers and a chunked body's trailers of any length, and httptools and uvicorn keep
them whole until they end, so one client could make a front end hold an unbounded head. Here what is read while a
head (or trailer) is unfinished is counted, and the parser is fed no more than the bound allows: past
MAX_HEAD_BYTES the answer is 431 with the JSON error body every other refusal has, and the connection closes
(nothing after a cut head can be read in step). Bodies are bounded by the app (the payload limit).
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.frontend.direct import error_body

# request line and headers: far above what SageMaker forwards (custom attributes are at most 1 KiB) and what common
# clients send, far below what would cost a front end memory
MAX_HEAD_BYTES = 64 * 1024


class BoundedHeadProtocol(HttpToolsProtocol):
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_bytes = 0
        self.reading_head = True  # a connection starts with a request's head
        self.refused = False  # a head was refused: nothing more is read (the connection closes)

    def data_received(self, data: bytes) -> None:
        """While a head is unfinished the parser gets at most what is left of the bound, so a read that carries a
        head and a large body (or several pipelined requests) is not counted whole. What follows the end of a
        request in the same piece is not counted: a head is held to the bound plus one piece."""
        if self.refused:  # (the answer to a request before it may resume reading)
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

    def _refuse_head(self) -> None:
        self.refused = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            # the request before this head is still being answered: its answer goes first (a 431 now would be read
            # as its answer), then the connection closes; nothing more is read meanwhile
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        body = error_body("request_header_fields_too_large",
                          f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes")
        self.transport.write(b"".join([
            STATUS_LINE[431], b"content-type: application/json\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n", body]))
        self.transport.close()
