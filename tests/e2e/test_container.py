"""The image: hadolint on the Dockerfile, its declared entrypoint run outside a container on a fake /opt/ml, and
the CPU image itself (built by docker/build_image.sh before the tests in CI) run with podman as SageMaker runs
it: the demo model mounted at /opt/ml/model (a folder, and a model.tar.gz's contents), the smoke test through
the published port, SIGTERM -> exit 0, a non-root user, nothing but serving's packages at their pins."""

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


def test_hadolint_finds_nothing(dockerfile="Dockerfile"):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed")
    result = subprocess.run([hadolint, str(REPO / "docker" / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_declares_the_sagemaker_contract(dockerfile="Dockerfile"):
    text = (REPO / "docker" / dockerfile).read_text()
    assert "EXPOSE 8080" in text
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in text
    assert "com.amazonaws.sagemaker.capabilities.multi-models=true" in text
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


IMAGE = os.environ.get("SERVING_TEST_IMAGE", "toxicity-serving:cpu")


@pytest.fixture(scope="module")
def podman() -> str:
    """podman with the CPU image built; in CI its absence fails the tests instead of skipping them."""
    found = shutil.which("podman")
    present = found is not None and subprocess.run([found, "image", "exists", IMAGE]).returncode == 0
    if not present:
        reason = f"podman or the image {IMAGE} is missing (docker/build_image.sh builds it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found  # type: ignore[return-value]


def run_in_image(podman: str, *command: str) -> str:
    done = subprocess.run([podman, "run", "--rm", IMAGE, *command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("source", ["folder", "model.tar.gz"])
def test_the_image_serves_as_sagemaker_runs_it_and_stops_cleanly(podman, demo_dir, tmp_path, source):
    model = demo_dir / "rnn"
    if source == "model.tar.gz":  # what SageMaker does with ModelDataUrl: its contents at /opt/ml/model
        model = tmp_path / "model"
        model.mkdir()
        with tarfile.open(demo_dir / "rnn.model.tar.gz") as tar:
            tar.extractall(model, filter="data")
        model.chmod(0o755)
    port = free_port()
    name = f"toxserve-test-{port}"
    started = subprocess.run([podman, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
                              "-v", f"{model}:/opt/ml/model:ro", IMAGE, "serve"], capture_output=True, text=True,
                             timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        smoke = subprocess.run([sys.executable, str(REPO / "docker" / "smoke_test.py"), f"http://127.0.0.1:{port}",
                                "--timeout", "120"], capture_output=True, text=True, timeout=180)
        logs = subprocess.run([podman, "logs", name], capture_output=True, text=True).stdout
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr + logs
        assert smoke.stdout.count("ok ") == 4
        stopped = subprocess.run([podman, "stop", "-t", "30", name], capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        code = subprocess.run([podman, "inspect", "--format", "{{.State.ExitCode}}", name],
                              capture_output=True, text=True).stdout.strip()
        assert code == "0", subprocess.run([podman, "logs", name], capture_output=True, text=True).stdout
    finally:
        subprocess.run([podman, "rm", "-f", name], capture_output=True)


def test_the_image_serves_a_multi_model_endpoint(podman, demo_dir):
    """SAGEMAKER_MULTI_MODEL=true as SageMaker sets it for a Mode MultiModel model: no model at start, the models'
    folders under /opt/ml/models, loaded and invoked through the /models API."""
    labels = subprocess.run([podman, "image", "inspect", "--format", "{{json .Labels}}", IMAGE], capture_output=True,
                            text=True).stdout
    assert json.loads(labels).get("com.amazonaws.sagemaker.capabilities.multi-models") == "true"
    import requests

    port = free_port()
    name = f"toxserve-test-mme-{port}"
    started = subprocess.run([podman, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-e",
                              "SAGEMAKER_MULTI_MODEL=true", "-v", f"{demo_dir}:/opt/ml/models:ro", IMAGE, "serve"],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        sys.path.insert(0, str(REPO / "docker"))
        from smoke_test import wait_ready

        wait_ready(url, 120)
        loaded = requests.post(url + "/models", json={"model_name": "lstm", "url": "/opt/ml/models/rnn"}, timeout=120)
        assert loaded.status_code == 200, loaded.text + subprocess.run([podman, "logs", name], capture_output=True,
                                                                       text=True).stdout
        answer = requests.post(url + "/models/lstm/invoke", json={"inputs": ["you are an idiot"]}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1, answer.text
        assert requests.delete(url + "/models/lstm", timeout=60).status_code == 200
        assert requests.get(url + "/models", timeout=10).json() == {"models": []}
    finally:
        subprocess.run([podman, "rm", "-f", name], capture_output=True)


def test_the_image_runs_as_non_root_with_exactly_serving_packages(podman):
    assert run_in_image(podman, "id", "-u").strip() == "1000"
    check = (
        "import importlib.metadata as m, importlib.util as u, json; "
        "print(json.dumps({'versions': {d.metadata['Name'].lower(): d.version for d in m.distributions()}, "
        "'tools': [n for n in ('matplotlib', 'pytest', 'sklearn', 'locust') if u.find_spec(n)]}))"
    )
    found = json.loads(run_in_image(podman, "python", "-c", check))
    assert found["tools"] == []
    from tests.unit.test_images import CPU, pins

    installed = {re.sub(r"[-_.]+", "-", k): v for k, v in found["versions"].items()}
    wanted = pins(CPU)
    assert {k: (v, installed.get(k)) for k, v in wanted.items() if installed.get(k) != v} == {}
