"""Layout engines under stress, on simulated accelerators (a forward that only waits, so the engine can be made
slow at will): an engine killed mid-load, SIGTERM during load, /ping and 429s while the engine is saturated."""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from tests.e2e.conftest import running_server, sigterm_under_load

TEXT = "thanks for the thoughtful reply, I will read the paper tonight"


def engine_pids(server) -> list[int]:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p.pid for p in children if "serving.engine" in " ".join(p.cmdline())]


def front_end_pids(server) -> list[int]:
    """uvicorn's workers: spawned interpreters (beside them, multiprocessing's resource tracker)."""
    pids = []
    for child in psutil.Process(server.process.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:  # gone, or a zombie not yet reaped
            pass
    return pids


def sim_server(tmp_path, demo_dir, *args: str):
    return running_server(tmp_path, "--model-dir", str(demo_dir / "roberta"), "--backend", "sim", "--layout", "engines",
                          "--workers", "2", *args)


def post(url: str, texts: list[str], timeout: float = 30) -> requests.Response:
    return requests.post(url + "/invocations", json={"inputs": texts}, timeout=timeout)


def test_an_engine_killed_mid_load_loses_no_request_silently_and_the_endpoint_recovers(demo_dir, tmp_path):
    with sim_server(tmp_path, demo_dir, "--sim-fixed-ms", "30") as server:
        [victim] = engine_pids(server)
        outcomes: list = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = post(server.url, [TEXT] * 3, timeout=20)
                except requests.RequestException as exc:  # a hung request times out, and fails the test
                    outcomes.append((type(exc).__name__, {}, time.monotonic() - started))
                    continue
                outcomes.append((response.status_code, response.json(), time.monotonic() - started))

        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        psutil.Process(victim).kill()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(30)
        statuses = [status for status, _, _ in outcomes]
        assert set(statuses) <= {200, 503}, outcomes
        assert 503 in statuses, "no request met the dead engine"
        assert all(body["error"]["code"] in ("engine_restarting", "not_ready") for status, body, _ in outcomes
                   if status == 503), outcomes
        assert max(seconds for status, _, seconds in outcomes if status == 503) < 5
        assert all(len(body["predictions"]) == 3 for status, body, _ in outcomes if status == 200)
        deadline = time.monotonic() + 30
        while requests.get(server.url + "/ping", timeout=2).status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert post(server.url, [TEXT]).status_code == 200
        [successor] = engine_pids(server)
        assert successor != victim
        assert f"engine 0 (pid {victim}) exited" in server.log()


def test_a_killed_front_end_is_replaced_while_the_other_keeps_serving(demo_dir, tmp_path):
    with sim_server(tmp_path, demo_dir) as server:
        front_ends = front_end_pids(server)
        assert len(front_ends) == 2, server.log()
        psutil.Process(front_ends[0]).kill()
        answers = [post(server.url, [TEXT]).status_code for _ in range(10)]  # new connections: the live one answers
        deadline = time.monotonic() + 30
        while len(front_end_pids(server)) < 2 or front_ends[0] in front_end_pids(server):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        answers += [post(server.url, [TEXT]).status_code for _ in range(20)]
        assert answers == [200] * 30, answers
        assert front_ends[1] in front_end_pids(server)


def test_a_stuck_front_end_is_killed_at_sigterm_and_the_engines_still_drain(demo_dir, tmp_path):
    """SIGSTOP stands for a front end whose event loop is stuck: its graceful stop never comes, so the supervisor
    kills it once the drain's time is up (or, had its health check pinged it first, as unresponsive), then stops
    the engines, and exits 0."""
    with sim_server(tmp_path, demo_dir, "--graceful-timeout-s", "7") as server:
        engines = engine_pids(server)
        stuck = front_end_pids(server)[0]
        psutil.Process(stuck).suspend()
        started = time.monotonic()
        server.process.terminate()
        code = server.process.wait(30)
        took = time.monotonic() - started
        assert code == 0 and took < 12, (code, took, server.log()[-2000:])
        assert (f"front end {stuck} did not finish its requests in time; killed" in server.log()
                or f"Child process [{stuck}] died" in server.log()), server.log()[-2000:]
        assert "engine 0 stopped" in server.log()
        assert not [pid for pid in [stuck, *engines] if psutil.pid_exists(pid)
                    and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def test_sigterm_during_load_drains_front_ends_then_engines_and_loses_nothing(demo_dir, tmp_path):
    with sim_server(tmp_path, demo_dir, "--sim-fixed-ms", "20", "--max-batch-size", "4") as server:
        engines = engine_pids(server)
        code, took, results = sigterm_under_load(server, lambda i: [f"{TEXT} {i}"] * 5)
        answered = [r for r in results if r[0] == "answered"]
        assert code == 0, server.log()
        assert took < 25, took
        assert answered and all(status == 200 and n == 5 for _, status, n in answered), results
        assert not [pid for pid in engines if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert "engine 0 stopped" in server.log()


def test_ping_answers_within_two_seconds_while_the_engine_is_saturated(demo_dir, tmp_path):
    """64 clients, at most 8 waiting on the engine per front end (`--threads 8`; the rest answer 429 at the door):
    /ping is answered on the front end's event loop however many wait."""
    with sim_server(tmp_path, demo_dir, "--sim-fixed-ms", "300", "--max-batch-size", "1", "--threads", "8") as server:
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                post(server.url, [TEXT], timeout=60)

        threads = [threading.Thread(target=client) for _ in range(64)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        pings = []
        for _ in range(10):
            started = time.monotonic()
            status = requests.get(server.url + "/ping", timeout=5).status_code
            pings.append((status, time.monotonic() - started))
            time.sleep(0.1)
        stop.set()
        assert all(status == 200 for status, _ in pings), pings
        assert max(seconds for _, seconds in pings) < 2.0, pings
        for t in threads:
            t.join(60)


def test_ping_answers_while_the_same_front_end_decodes_and_tokenises_a_batch_transform_request(demo_dir, tmp_path):
    """A batch transform's mini-batch (here 24,000 texts, 5 MB) takes seconds to decode, tokenise and answer; a
    thread does that work, so the front end's event loop still answers /ping (one front end: the request and the
    pings meet there)."""
    words = "you are a thoroughly wonderful person and I hope your day goes well".split()
    texts = [" ".join(words[(i + k) % len(words)] for k in range(40)) + f" {i}" for i in range(24000)]
    with sim_server(tmp_path, demo_dir, "--sim-fixed-ms", "1", "--workers", "1") as server:
        big: dict = {}

        def send_big() -> None:
            started = time.monotonic()
            big["response"] = post(server.url, texts, timeout=120)
            big["seconds"] = time.monotonic() - started

        sender = threading.Thread(target=send_big)
        sender.start()
        pings = []
        while sender.is_alive():
            started = time.monotonic()
            status = requests.get(server.url + "/ping", timeout=10).status_code
            pings.append((status, time.monotonic() - started))
            time.sleep(0.05)
        sender.join()
        assert big["response"].status_code == 200, big["response"].text[:300]
        assert len(big["response"].json()["predictions"]) == len(texts)
        assert len(pings) > 10, (big["seconds"], len(pings))  # the work took long enough to ping through
        assert all(status == 200 for status, _ in pings), pings
        slowest = max(seconds for _, seconds in pings)
        assert slowest < min(1.0, big["seconds"] / 4), (big["seconds"], sorted(s for _, s in pings)[-5:])


def test_overload_gets_429_with_retry_after_at_the_door_in_milliseconds(demo_dir, tmp_path):
    with sim_server(tmp_path, demo_dir, "--sim-fixed-ms", "100", "--max-batch-size", "2",
                    "--max-queue-texts", "8") as server:
        sessions = threading.local()  # keep-alive connections, as SageMaker's front end keeps them

        def send(_: int):
            session = getattr(sessions, "session", None) or requests.Session()
            sessions.session = session
            started = time.monotonic()
            response = session.post(server.url + "/invocations", json={"inputs": [TEXT]}, timeout=30)
            return response, time.monotonic() - started

        with ThreadPoolExecutor(32) as pool:
            outcomes = list(pool.map(send, range(512)))
        refused = [(r, s) for r, s in outcomes if r.status_code == 429]
        accepted = [r for r, _ in outcomes if r.status_code == 200]
        assert refused and accepted and len(refused) + len(accepted) == len(outcomes)
        assert all(r.headers["Retry-After"] and r.json()["error"]["code"] == "queue_full" for r, _ in refused)
        assert statistics.median(s for _, s in refused) < 0.05, sorted(s for _, s in refused)
        assert requests.get(server.url + "/ping", timeout=5).status_code == 200


def test_an_over_long_chunked_body_gets_413_not_a_silently_cut_one(demo_dir, tmp_path):
    """An ASGI server passes a chunked body on without a Content-Length: the front end must refuse it once it passes the
    limit (werkzeug alone would cut it at the limit and answer 400 or 200)."""
    with sim_server(tmp_path, demo_dir, "--max-payload-mb", "1") as server:
        chunk = b'["' + b"word " * 150_000 + b'"]'  # ~0.75 MB of JSON, sent twice without a Content-Length

        def body():
            yield chunk[:-2]
            yield b" " + chunk[2:-2] + b'"]'

        response = requests.post(server.url + "/invocations", data=body(), timeout=30,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 413, response.text[:200]
        small = requests.post(server.url + "/invocations", data=iter([b'["hello', b' there"]']), timeout=30,
                              headers={"Content-Type": "application/json"})
        assert small.status_code == 200 and len(small.json()["predictions"]) == 1


def test_a_hung_engine_is_seen_by_ping_killed_and_replaced(demo_dir, tmp_path):
    """SIGSTOP stands for an engine stuck in a device call: its heartbeat stops, /ping says 503, waiting requests get
    503 rather than their deadline's 504, and the supervisor kills it and starts a fresh one."""
    with sim_server(tmp_path, demo_dir) as server:
        [victim] = engine_pids(server)
        psutil.Process(victim).suspend()
        started = time.monotonic()
        waiting = post(server.url, [TEXT], timeout=40)
        assert waiting.status_code == 503 and time.monotonic() - started < 20, waiting.text
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ping = requests.get(server.url + "/ping", timeout=2)
            seen.append(ping.status_code)
            if ping.status_code == 200 and 503 in seen:
                break
            time.sleep(0.2)
        assert 503 in seen and seen[-1] == 200, (seen, server.log())
        assert post(server.url, [TEXT]).status_code == 200
        assert "is hung (no heartbeat" in server.log() and victim not in engine_pids(server)


def test_front_ends_and_a_simulated_engine_run_without_torch(demo_dir, tmp_path):
    """Front ends (one per CPU core) only tokenise, and a simulated engine runs no model: none of them maps
    libtorch (seconds of start and hundreds of MB per process); the supervisor neither."""
    with sim_server(tmp_path, demo_dir) as server:
        assert post(server.url, [TEXT]).status_code == 200
        processes = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
        assert len(engine_pids(server)) == 1 and len(processes) >= 4, [p.cmdline() for p in processes]
        with_torch = [p.cmdline() for p in processes if "libtorch" in Path(f"/proc/{p.pid}/maps").read_text()]
        assert not with_torch, (with_torch, server.log())


def test_with_the_torch_backend_only_the_engine_maps_torch(demo_dir, tmp_path):
    """The supervisor finds GPUs through a spawned probe, not by importing torch itself, so the front ends it
    forks do not inherit libtorch either; the engine, which runs the model, is the one process that maps it."""
    args = ["--model-dir", str(demo_dir / "rnn"), "--backend", "torch", "--layout", "engines", "--workers", "2"]
    with running_server(tmp_path, *args) as server:
        assert post(server.url, [TEXT]).status_code == 200
        processes = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
        with_torch = {p.pid for p in processes if "libtorch" in Path(f"/proc/{p.pid}/maps").read_text()}
        assert server.process.pid not in with_torch, server.log()
        assert with_torch == set(engine_pids(server)) and len(with_torch) == 1, (
            [(p.pid, p.cmdline()) for p in processes], server.log())


def test_a_request_head_over_the_limit_gets_431_and_bodies_and_heads_under_it_are_served(demo_dir, tmp_path):
    """llhttp reads heads of any size: the front end counts what it reads of an unfinished head (or a chunked body's
    trailers) and refuses it past MAX_HEAD_BYTES, even one that never ends; a large body, in the same read as its
    head or not, or a large head under the limit, is served, and the connection's next request is counted afresh;
    a pipelined request whose head is too large never gets ahead of the answer to the one before it."""
    import json
    import socket

    from serving.frontend.protocol import MAX_HEAD_BYTES

    def raw(data: bytes, pieces: int = 1) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            step = -(-len(data) // pieces)
            try:
                for start in range(0, len(data), step):
                    sock.sendall(data[start:start + step])
                    time.sleep(0.01)
            except OSError:  # refused part way: the answer is already on its way
                pass
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except ConnectionResetError:  # closed with what was sent after the refusal unread
                pass
            except TimeoutError:  # neither answered nor closed: the assertions below say so
                pass
            return answer

    def refused(answer: bytes) -> bool:
        head, _, body = answer.partition(b"\r\n\r\n")
        return (head.startswith(b"HTTP/1.1 431 ") and b"connection: close" in head.lower()
                and json.loads(body)["error"]["code"] == "request_header_fields_too_large")

    def request(body: bytes) -> bytes:
        return (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    with sim_server(tmp_path, demo_dir) as server:
        filler = b"X-Filler: " + b"a" * (MAX_HEAD_BYTES + 300_000) + b"\r\n"  # past it by more than any one read
        big = b"POST /invocations HTTP/1.1\r\nHost: x\r\n" + filler
        assert refused(raw(big + b"Content-Length: 2\r\n\r\n[]"))
        assert refused(raw(big, pieces=20))  # a head that never ends
        chunked = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n9\r\n[\"hello\"]\r\n0\r\n" + filler)
        assert refused(raw(chunked, pieces=20))  # trailers that never end
        texts = ["a long enough text to make the body large " * 4] * 1500  # ~250 KB
        whole = raw(request(json.dumps({"inputs": texts}).encode()) + b"GET /ping HTTP/1.1\r\nHost: x\r\n"
                    b"Connection: close\r\n\r\n")  # head, large body and a pipelined request in one write
        assert whole.startswith(b"HTTP/1.1 200 ") and whole.count(b"HTTP/1.1 200 ") == 2, whole[:300]
        answers = raw(request(json.dumps({"inputs": texts}).encode()) + big)
        head, _, rest = answers.partition(b"\r\n\r\n")  # the first answer is the first request's, whole
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        assert head.startswith(b"HTTP/1.1 200 "), answers[:300]
        assert len(json.loads(rest[:length])["predictions"]) == 1500
        assert not rest[length:] or refused(rest[length:])  # a refusal only once that answer was sent
        session = requests.Session()
        under = {f"X-Filler-{i}": "b" * 1000 for i in range(MAX_HEAD_BYTES // 1100)}
        for _ in range(3):  # kept alive: each head counted from its own start
            response = session.post(server.url + "/invocations", json={"inputs": ["hello there"]}, headers=under)
            assert response.status_code == 200, response.text[:200]


def test_a_client_that_stops_sending_gets_its_answer_or_408_and_the_server_keeps_serving(demo_dir, tmp_path):
    """HTTP lets a client half-close its connection once the request is sent (nc -N does); uvicorn would close at
    once and the engine's answer would be lost. A body cut short by the close still ends the connection, and one
    that stops arriving (the client stays) gets 408 at the request's deadline."""
    import json
    import socket

    def half_closed(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes: it must, once it has answered
                answer += chunk
            return answer

    body = json.dumps({"inputs": ["hello there", "a second text"]}).encode()
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with sim_server(tmp_path, demo_dir, "--timeout-s", "2") as server:
        for _ in range(5):
            answer = half_closed(head + body)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            assert len(json.loads(answer.partition(b"\r\n\r\n")[2])["predictions"]) == 2
        assert half_closed(head + body[:5]) == b""  # cut short: closed unanswered, nothing scored in part
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(head + body[:5])  # and nothing more, still connected
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and 1.5 < time.monotonic() - started < 8, answer[:200]
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"
        assert requests.get(server.url + "/ping", timeout=5).status_code == 200
