"""The images' pins are the versions the tests run, carry nothing serving does not need, and resolve for the
image's Python (pip's resolver against the package index, as the image build will)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CPU, GPU = REPO / "docker" / "requirements-cpu.txt", REPO / "docker" / "requirements-gpu.txt"
NOT_FOR_SERVING = ("matplotlib", "pytest", "scikit-learn", "locust", "moto", "schemathesis", "ruff", "mypy", "onnx")
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + ["manylinux2014_x86_64"]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            found[re.sub(r"[-_.]+", "-", name.lower())] = version.strip()
    return found


def test_cpu_pins_are_the_installed_versions_the_tests_run():
    wrong = {name: (version, importlib.metadata.version(name)) for name, version in pins(CPU).items()
             if importlib.metadata.version(name) != version}
    assert not wrong, f"pinned vs installed: {wrong}"


def test_gpu_pins_differ_from_the_cpu_ones_only_by_the_cuda_builds():
    cpu, gpu = pins(CPU), pins(GPU)
    assert gpu["torch"] == cpu["torch"].split("+")[0] and gpu["onnxruntime-gpu"] == cpu["onnxruntime"]
    shared = set(cpu) & set(gpu) - {"torch"}
    assert {name: (cpu[name], gpu[name]) for name in shared if cpu[name] != gpu[name]} == {}
    extra = set(gpu) - set(cpu) - {"onnxruntime-gpu"}
    assert all(name.startswith(("nvidia-", "cuda-")) or name == "triton" for name in extra), extra


@pytest.mark.parametrize("path", [CPU, GPU], ids=["cpu-file", "cuda-file"])
def test_serving_images_carry_no_tools_or_test_packages(path):
    assert not set(pins(path)) & set(NOT_FOR_SERVING)


def test_the_dockerfile_takes_the_python_version_and_the_pins_as_build_arguments():
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_VERSION=3\.11$", text, re.M)
    assert "ARG REQUIREMENTS=docker/requirements-cpu.txt" in text and re.search(r"^USER 1000$", text, re.M)
    assert 'requires-python = ">=3.11"' in (REPO / "pyproject.toml").read_text()


@pytest.fixture(scope="module")
def source_only_wheels(tmp_path_factory) -> Path:
    """Wheels of the pinned packages that PyPI ships as source only (sagemaker-inference: pure Python)."""
    folder = tmp_path_factory.mktemp("wheels")
    version = pins(CPU)["sagemaker-inference"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(folder),
                    f"sagemaker-inference=={version}"], check=True, timeout=300)
    return folder


def resolver_command(path: Path, source_only_wheels: Path) -> list[str]:
    command = [sys.executable, "-m", "pip"]
    if path == GPU:  # PyPI alone, where torch is the CUDA build
        command += ["--isolated", "--cert", "/etc/ssl/certs/ca-certificates.crt"]
    command += ["install", "--dry-run", "--ignore-installed", "--quiet", "--python-version", "3.11",
                "--only-binary=:all:", "--find-links", str(source_only_wheels), "-r", str(path)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    return command


def test_pips_resolver_accepts_each_file_for_the_images_python(source_only_wheels):
    """Network: PyPI (CI reaches it). The CPU file resolves as this machine's pip is set up (torch's CPU build
    lies on its disk); both run at once, since each mostly waits on the index."""
    runs = {path.name: subprocess.Popen(resolver_command(path, source_only_wheels), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True) for path in (CPU, GPU)}
    failed = {}
    for name, run in runs.items():
        output, _ = run.communicate(timeout=600)
        if run.returncode != 0:
            failed[name] = output[-3000:]
    assert not failed, failed
