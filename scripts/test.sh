#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (lint and type checks included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
