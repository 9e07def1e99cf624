#!/usr/bin/env bash
# Build an image and push it to ECR: docker/build_push.sh [gpu|cpu] [REPOSITORY] [TAG]
# Needs a Docker engine and AWS credentials (neither exists on the development machines).
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-gpu}"; repository="${2:-toxicity-serving}"; tag="${3:-$(git rev-parse --short HEAD)-$flavour}"
build_args=(--build-arg REQUIREMENTS=docker/requirements-gpu.txt --build-arg TORCH_INDEX= --build-arg SERVING_DEVICE=cuda)
[ "$flavour" = cpu ] && build_args=()
account="$(aws sts get-caller-identity --query Account --output text)"
region="${AWS_REGION:-$(aws configure get region)}"
registry="$account.dkr.ecr.$region.amazonaws.com"
aws ecr describe-repositories --repository-names "$repository" >/dev/null 2>&1 \
    || aws ecr create-repository --repository-name "$repository" >/dev/null
aws ecr get-login-password | docker login --username AWS --password-stdin "$registry"
docker build -f docker/Dockerfile "${build_args[@]}" -t "$registry/$repository:$tag" .
docker push "$registry/$repository:$tag"
echo "$registry/$repository:$tag"
