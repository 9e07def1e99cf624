"""The front end's HTTP protocol (serving.frontend.protocol) fed bytes in memory, with a transport that records what
is written: a head past the bound gets 431 and the connection closes without a reset, a large body in the same read
as its head is served, a refusal never gets ahead of (or after) the answer to a request before it, and an answer's
head and body leave in one write."""

from __future__ import annotations

import asyncio
import json

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from serving.frontend.protocol import HOLD_BYTES, MAX_HEAD_BYTES, BoundedHeadProtocol, OneWritePerPass

TOO_LONG = b"X-Filler: " + b"a" * (MAX_HEAD_BYTES + 20_000) + b"\r\n"  # by more than the piece that starts it


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = self.eof = self.aborted = False
        self.events: list[str] = []

    def write(self, data) -> None:
        self.written.append(bytes(data))
        self.events.append("write")

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = self.aborted = True

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True
        self.events.append("eof")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    @property
    def answers(self) -> bytes:
        return b"".join(self.written)


class Connection:
    """A protocol on its own loop; /slow answers once `release` is set, /early without reading its body."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.release = asyncio.Event()
        self.bodies: list[int] = []
        config = Config(app=self.app, interface="asgi3", http="httptools", ws="none", lifespan="off",
                        log_level="critical")
        config.load()
        self.protocol = BoundedHeadProtocol(config, ServerState(), {}, _loop=self.loop)
        self.transport = Transport()
        self.protocol.connection_made(self.transport)

    async def app(self, scope, receive, send) -> None:
        body = b""
        while scope["path"] != "/early":
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message["body"]
            if not message["more_body"]:
                break
        if scope["path"] == "/slow":
            await self.release.wait()
        self.bodies.append(len(body))
        answer = f"{scope['path']} {len(body)}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    def feed(self, data: bytes, piece: int = 16384) -> None:
        for start in range(0, len(data), piece):
            self.protocol.data_received(data[start:start + piece])
            self.spin()

    def spin(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0.01))


@pytest.fixture
def connection():
    made = Connection()
    yield made
    pending = asyncio.all_tasks(made.loop)  # requests never answered (dropped, refused)
    for task in pending:
        task.cancel()

    async def cancelled() -> None:
        await asyncio.gather(*pending, return_exceptions=True)

    made.loop.run_until_complete(cancelled())
    made.loop.close()


def refused(answers: bytes) -> bool:
    head, _, body = answers.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 431 ") and json.loads(body)["error"]["code"] == "request_header_fields_too_large"


def test_a_head_past_the_bound_gets_431_and_the_write_side_closes_first(connection):
    connection.feed(b"POST /a HTTP/1.1\r\nHost: x\r\n" + TOO_LONG)
    assert refused(connection.transport.answers)
    assert connection.transport.eof and not connection.transport.closing  # no reset: the close follows later
    connection.feed(b"more of it\r\n\r\n")  # dropped, never parsed
    assert connection.bodies == []


def test_a_large_body_in_the_same_read_as_its_head_is_served(connection):
    body = b"x" * 300_000
    connection.feed(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + body, piece=256_000)
    assert connection.bodies == [300_000] and connection.transport.answers.startswith(b"HTTP/1.1 200 ")


def test_a_head_refused_behind_a_request_in_flight_waits_for_its_answer_then_the_connection_closes(connection):
    connection.feed(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    connection.feed(b"GET /c HTTP/1.1\r\nHost: x\r\n" + TOO_LONG)
    assert connection.transport.answers == b""  # a 431 now would be read as the answer to /slow
    connection.release.set()
    connection.spin()
    answers = connection.transport.answers
    assert answers.startswith(b"HTTP/1.1 200 ") and b"connection: close" in answers.lower() and b" 431 " not in answers
    assert connection.transport.closing


def test_trailers_past_the_bound_of_a_queued_request_drop_it_and_close_after_the_answer_before_it(connection):
    connection.feed(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    connection.feed(b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n" + TOO_LONG)
    assert connection.transport.answers == b""
    connection.release.set()
    connection.spin()
    answers = connection.transport.answers
    assert answers.count(b"HTTP/1.1 ") == 1 and answers.startswith(b"HTTP/1.1 200 ") and b"/slow" in answers
    assert connection.transport.closing and connection.bodies == [0]  # /b never ran


def test_trailers_past_the_bound_of_the_running_request_get_431(connection):
    connection.feed(b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n" + TOO_LONG)
    assert refused(connection.transport.answers) and connection.transport.eof


def test_trailers_past_the_bound_after_an_early_answer_add_no_second_answer(connection):
    connection.feed(b"POST /early HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    connection.feed(b"0\r\n" + TOO_LONG)
    answers = connection.transport.answers
    assert answers.count(b"HTTP/1.1 ") == 1 and answers.startswith(b"HTTP/1.1 200 ")
    assert connection.transport.eof or connection.transport.closing


def test_an_answer_leaves_in_one_write(connection):
    connection.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    # uvicorn writes the head and the body apart; here they reach the transport in one call (writelines, which
    # asyncio's base transport joins: that uvloop sends them in one writev was seen with strace, not tested here)
    assert len(connection.transport.written) == 1
    assert connection.transport.answers.startswith(b"HTTP/1.1 200 ") and connection.transport.answers.endswith(b"/a 0")


def test_writes_of_a_pass_go_at_its_end_and_before_a_close_or_an_end_of_writing():
    loop = asyncio.new_event_loop()
    try:
        for finish in ("close", "eof"):
            transport = Transport()
            held = OneWritePerPass(transport, loop)
            held.write(b"head ")
            held.write(memoryview(bytearray(b"body")))
            assert transport.written == [] and held.get_write_buffer_size() == 9
            held.close() if finish == "close" else held.write_eof()
            assert transport.written == [b"head body"] and transport.events == ["write", finish]
            loop.run_until_complete(asyncio.sleep(0))  # the end of the pass finds nothing left to send
            assert transport.written == [b"head body"]

        transport = Transport()
        held = OneWritePerPass(transport, loop)
        held.write(b"answer")
        loop.run_until_complete(asyncio.sleep(0))
        assert transport.written == [b"answer"]
        held.write(b"late")
        transport.closing = True  # the connection was lost before the pass ended: nothing is sent
        loop.run_until_complete(asyncio.sleep(0))
        held.write(b"dropped")
        held.abort()
        loop.run_until_complete(asyncio.sleep(0))
        assert transport.written == [b"answer"] and transport.aborted and held.get_write_buffer_size() == 0
    finally:
        loop.close()


def test_an_answer_held_when_the_client_finishes_sending_goes_before_uvloop_closes(connection):
    connection.protocol.transport.write(b"an answer of this pass")
    assert connection.transport.written == []
    connection.protocol.eof_received()  # uvloop closes the real transport right after this, not through the proxy
    assert connection.transport.written == [b"an answer of this pass"]


def test_a_large_write_goes_at_once_and_nothing_follows_an_end_of_writing():
    loop = asyncio.new_event_loop()
    try:
        transport = Transport()
        held = OneWritePerPass(transport, loop)
        held.write(b"head ")
        held.write(b"x" * HOLD_BYTES)
        assert len(transport.written) == 1 and len(transport.written[0]) == HOLD_BYTES + 5
        assert held.get_write_buffer_size() == 0
        held.write_eof()
        with pytest.raises(RuntimeError):
            held.write(b"more")
        loop.run_until_complete(asyncio.sleep(0))
        assert len(transport.written) == 1
    finally:
        loop.close()


def test_a_client_that_half_closes_after_a_whole_request_is_answered_then_the_connection_closes(connection):
    connection.feed(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    assert connection.protocol.eof_received() is True  # the transport stays open for the answer
    connection.release.set()
    connection.spin()
    assert connection.transport.answers.startswith(b"HTTP/1.1 200 ") and connection.transport.closing


def test_a_client_that_half_closes_mid_body_or_with_everything_answered_is_not_waited_for(connection):
    connection.feed(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    assert not connection.protocol.eof_received()  # (uvloop then closes the transport: the app hears a disconnect)
    answered = Connection()
    answered.feed(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answered.transport.answers.startswith(b"HTTP/1.1 200 ")
    assert not answered.protocol.eof_received()  # kept alive with nothing left to answer: closed, not left idle
    answered.loop.close()


def test_a_client_that_half_closes_after_a_refused_head_still_gets_the_answer_before_it(connection):
    connection.feed(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    connection.feed(b"GET /c HTTP/1.1\r\nHost: x\r\n" + TOO_LONG)  # refused: /slow is answered, then close
    assert connection.protocol.eof_received() is True
    connection.release.set()
    connection.spin()
    answers = connection.transport.answers
    assert answers.startswith(b"HTTP/1.1 200 ") and b"/slow" in answers and connection.transport.closing
