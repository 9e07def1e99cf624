#!/usr/bin/env bash
# Build the CPU serving image with podman on a machine like this project's (no Docker engine, no Docker Hub,
# pip inside a build fails TLS): Debian's podman and runc, a stand-in python:3.11 base made with debootstrap,
# and a wheelhouse downloaded on the host. Idempotent; prints each step's time. See ../shared/CONTAINERS.md.
#   docker/build_image.sh [IMAGE]          (default toxicity-serving:cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-toxicity-serving:cpu}"
base=localhost/bookworm-py311
PIP="${PIP:-python3 -m pip}"  # the host's: needs no project venv, so CI builds while setting up
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }  # this host's pip config
step() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    step "installing podman, runc, debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi
# crun fails on this host's rlimits and hybrid cgroups; runc with cgroupfs works
conf=/etc/containers/containers.conf
wanted=$'[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"'
if [ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]; then
    mkdir -p /etc/containers && printf '%s\n' "$wanted" > "$conf"
fi
if ! podman image exists "$base"; then
    step "making the stand-in base $base with debootstrap"
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$rootfs" -c . | podman import -q - "$base" >/dev/null
    rm -rf "$rootfs"
fi
step "filling docker/wheelhouse from docker/requirements-cpu.txt"
quiet $PIP download --quiet --no-deps -d docker/wheelhouse -r docker/requirements-cpu.txt
for sdist in docker/wheelhouse/*.tar.gz; do  # sagemaker-inference ships only a source archive (pure Python)
    [ -e "$sdist" ] || continue
    quiet $PIP wheel --quiet --no-deps -w docker/wheelhouse "$sdist" && rm "$sdist"
done
quiet $PIP download --quiet --no-deps -d docker/wheelhouse "setuptools>=68" wheel  # builds the project offline
step "building $image"
podman build --quiet --format docker --network host -f docker/Dockerfile --build-arg BASE_IMAGE="$base" \
    --build-arg WHEELS=wheelhouse -t "$image" . >/dev/null
podman image prune -f >/dev/null  # the build stage
step "built $image: $(podman image inspect "$image" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"
