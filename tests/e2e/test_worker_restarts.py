"""Workers that die or are recycled under load, on a model.tar.gz endpoint: each replacement loads the same
extracted folder and serves, and nothing answers 503 once they are back."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import requests

from tests.e2e.conftest import running_server


def workers_of(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return {int(p) for p in found}


def test_sigterm_and_sigkill_of_a_worker_under_load_leave_the_endpoint_whole(demo_dir, tmp_path):
    with running_server(tmp_path, "--model-dir", str(demo_dir / "rnn.model.tar.gz"), "--workers", "2") as server:
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        statuses.append(session.post(server.url + "/invocations", json=["hello", "you idiot"],
                                                     timeout=30).status_code)
                    except requests.ConnectionError:
                        statuses.append(0)

        senders = [threading.Thread(target=load) for _ in range(4)]
        for sender in senders:
            sender.start()
        original = workers_of(server.process.pid)
        assert len(original) == 2
        for sig in (signal.SIGTERM, signal.SIGKILL):
            victim = sorted(workers_of(server.process.pid))[0]
            os.kill(victim, sig)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                now = workers_of(server.process.pid)
                if victim not in now and len(now) == 2:
                    break
                time.sleep(0.2)
            time.sleep(3)  # the replacement loads before it accepts connections
        settled = len(statuses)
        time.sleep(3)
        stop.set()
        for sender in senders:
            sender.join(30)
        after = statuses[settled:]
        assert len(workers_of(server.process.pid)) == 2 and workers_of(server.process.pid) != original
        assert after and set(after) == {200}, (sorted(set(statuses)), server.log()[-3000:])
        assert "no such model folder" not in server.log()
        assert all(requests.post(server.url + "/invocations", json=["hi"], timeout=30).status_code == 200
                   for _ in range(10))
