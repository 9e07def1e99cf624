"""`python -m serving.healthcheck`: exit 0 when this container's /ping answers 200 (Docker HEALTHCHECK)."""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('SAGEMAKER_BIND_TO_PORT', '8080')}/ping"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
