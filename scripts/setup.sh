#!/usr/bin/env bash
# Sets up .venv (torch first, CPU build unless TORCH_SPEC says otherwise), installs the package
# with its CPU, dev and tools extras, and builds the demo models if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch explicitly first: letting pip resolve it from the package's dependencies pulls a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
# Runtime packages at exactly the CPU image's pins (torch aside: TORCH_SPEC chose it), so tests run what ships.
grep -v '^torch==' docker/requirements-cpu.txt > .venv/image-constraints.txt
.venv/bin/python -m pip install --quiet -e ".[cpu,dev,tools]" -c .venv/image-constraints.txt
.venv/bin/python model_artifacts/build_demo.py
