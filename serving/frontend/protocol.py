"""The HTTP/1.1 protocol each front end's uvicorn runs: uvicorn's httptools protocol with a bound on a request's head.

llhttp reads a request line and headers of any length, and httptools and uvicorn keep them whole until the head
ends, so one client could make a front end hold an unbounded head. Here the bytes read while a head is incomplete
are counted: past MAX_HEAD_BYTES the answer is 431 with the JSON error body every other refusal has, and the
connection closes (nothing after a cut head can be read in step). Bodies are bounded by the app (the payload limit).
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

    def data_received(self, data: bytes) -> None:
        if self.reading_head:  # a chunk that also ends a head may count a little of what follows: bound, not exact
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self.head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_head = True  # the next request on the connection (keep-alive, pipelining)

    def _refuse_head(self) -> None:
        body = error_body("request_header_fields_too_large",
                          f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes")
        self.transport.write(b"".join([
            STATUS_LINE[431], b"content-type: application/json\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n", body]))
        self.transport.close()
