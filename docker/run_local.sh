#!/usr/bin/env bash
# Run an image locally as SageMaker would, with a model folder (or model.tar.gz) mounted at /opt/ml/model,
# then smoke-test it, with docker or podman: docker/run_local.sh IMAGE MODEL_DIR_OR_TARBALL [gpu|cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
image="$1"; model="$2"; flavour="${3:-gpu}"
if [ -f "$model" ]; then  # a model.tar.gz: unpack it as SageMaker does
    unpacked="$(mktemp -d)"; tar -xzf "$model" -C "$unpacked"; chmod 755 "$unpacked"; model="$unpacked"
fi
engine=docker; command -v docker >/dev/null && docker info >/dev/null 2>&1 || engine=podman
gpus=()
if [ "$flavour" = gpu ]; then  # docker's --gpus; podman's CDI device (nvidia-ctk cdi generate)
    if [ "$engine" = docker ]; then gpus=(--gpus all); else gpus=(--device nvidia.com/gpu=all); fi
fi
container="$("$engine" run -d "${gpus[@]}" -p 8080:8080 -v "$(realpath "$model"):/opt/ml/model:ro" "$image" serve)"
trap '"$engine" stop "$container" >/dev/null' EXIT
python3 docker/smoke_test.py http://127.0.0.1:8080 --timeout 300
