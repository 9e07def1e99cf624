#!/usr/bin/env bash
# Wheels the lent GPU machines lack for bench_gpu.py (their image has torch, transformers, tokenizers,
# safetensors, onnx, prometheus-client, click, werkzeug, requests; not these). Carried as .whl/:
#   device run, carry [".whl", "model_artifacts/demo/roberta"], command:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. \
#     && PYTHONUNBUFFERED=1 python3 loadtest/bench_gpu.py --out $OUT/bench_gpu.json
# Their onnxruntime is the CPU build and onnxruntime-gpu is too big to carry, so the ONNX rows there run on
# the CPU provider unless the image gains the GPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info && touch .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl flask==3.1.3 gunicorn==27.0.1 itsdangerous==2.2.0 blinker==1.9.0 retrying==1.4.2
# sagemaker-inference ships only a source archive; it is pure Python, so a wheel built here runs there.
python3 -m pip wheel --quiet --no-deps -w .whl sagemaker-inference==1.10.1
ls -la .whl
