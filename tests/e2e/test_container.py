"""The image, checked without Docker: hadolint on both Dockerfiles, and the declared entrypoint run outside
Docker on a fake /opt/ml holding the demo model.tar.gz, passing the smoke test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import free_port


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_hadolint_finds_nothing(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed")
    result = subprocess.run([hadolint, str(REPO / "docker" / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_declares_the_sagemaker_contract(dockerfile):
    text = (REPO / "docker" / dockerfile).read_text()
    assert "EXPOSE 8080" in text
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in text
    assert re.search(r"^HEALTHCHECK .*serving\.healthcheck", text, re.M)
    assert json.loads(re.search(r"^CMD (.*)$", text, re.M).group(1)) == ["serve"]


def test_declared_entrypoint_serves_a_fake_opt_ml_and_passes_the_smoke_test(demo_dir, tmp_path):
    command = json.loads(re.search(r"^CMD (.*)$", (REPO / "docker" / "Dockerfile").read_text(), re.M).group(1))
    model = tmp_path / "ml" / "model"
    model.mkdir(parents=True)
    with tarfile.open(demo_dir / "rnn.model.tar.gz") as tar:  # what SageMaker does with ModelDataUrl
        tar.extractall(model, filter="data")
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path / "ml"), "SAGEMAKER_BIND_TO_PORT": str(port),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("SERVING_MODEL_DIR", None)
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        smoke = subprocess.run([sys.executable, str(REPO / "docker" / "smoke_test.py"), f"http://127.0.0.1:{port}",
                                "--timeout", "90"], capture_output=True, text=True, timeout=150)
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr + (tmp_path / "serve.log").read_text()
        assert smoke.stdout.count("ok ") == 4
        assert f"from {model}" in (tmp_path / "serve.log").read_text()  # the fake /opt/ml/model, not the demo
        health = subprocess.run([sys.executable, "-m", "serving.healthcheck"], env=env, timeout=30)
        assert health.returncode == 0
    finally:
        server.terminate()
        assert server.wait(40) == 0
