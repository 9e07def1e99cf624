#!/usr/bin/env bash
# Run an image locally as SageMaker would, with a model folder (or model.tar.gz) mounted at /opt/ml/model,
# then smoke-test it: docker/run_local.sh IMAGE MODEL_DIR_OR_TARBALL [gpu|cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
image="$1"; model="$2"; flavour="${3:-gpu}"
if [ -f "$model" ]; then  # a model.tar.gz: unpack it as SageMaker does
    unpacked="$(mktemp -d)"; tar -xzf "$model" -C "$unpacked"; model="$unpacked"
fi
gpus=(); [ "$flavour" = gpu ] && gpus=(--gpus all)
container="$(docker run -d "${gpus[@]}" -p 8080:8080 -v "$(realpath "$model"):/opt/ml/model:ro" "$image" serve)"
trap 'docker stop "$container" >/dev/null' EXIT
python3 docker/smoke_test.py http://127.0.0.1:8080 --timeout 300
