"""Wait for a container's /ping, then send one request of each content type; exit 1 on the first failure.

    python docker/smoke_test.py [http://127.0.0.1:8080] [--timeout 180]
Standard library only, so it runs anywhere the image is tried.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request

REQUESTS = [
    ("application/json", json.dumps({"inputs": ["you are an idiot", "lovely photos"]}), 2),
    ("application/jsonlines", '"you are an idiot"\n{"inputs": "lovely photos"}\n', 2),
    ("text/csv", '"you are an idiot, honestly"\nlovely photos\n', 2),
    ("text/plain", "you are an idiot", 1),
]


def wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise SystemExit(f"{url}/ping not ready after {timeout_s:.0f} s")


def main(argv: list[str]) -> int:
    url = (argv[0] if argv and not argv[0].startswith("--") else "http://127.0.0.1:8080").rstrip("/")
    timeout_s = float(argv[argv.index("--timeout") + 1]) if "--timeout" in argv else 180
    wait_ready(url, timeout_s)
    for content_type, body, expected in REQUESTS:
        request = urllib.request.Request(url + "/invocations", data=body.encode(), method="POST",
                                         headers={"Content-Type": content_type, "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            predictions = json.loads(response.read())["predictions"]
        if len(predictions) != expected:
            print(f"FAIL {content_type}: {len(predictions)} predictions, expected {expected}")
            return 1
        print(f"ok   {content_type}: {predictions[0]['labels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
