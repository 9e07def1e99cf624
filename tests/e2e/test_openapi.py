"""The contract as a document: /openapi.json is the file in the repo, and a property-based fuzz run
(schemathesis) against the live server finds no 5xx, no undocumented status or media type, and no hang."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import requests

from tests.conftest import REPO
from tests.e2e.conftest import running_server

DOCUMENT = REPO / "serving" / "openapi.json"


def test_the_served_document_is_the_one_in_the_repo(server):
    served = requests.get(server.url + "/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == json.loads(DOCUMENT.read_text())


def test_fuzzing_the_live_server_finds_no_server_error_and_no_hang(demo_dir, tmp_path):
    schemathesis = Path(sys.executable).parent / "schemathesis"
    with running_server(tmp_path, "--model-dir", str(demo_dir / "rnn.model.tar.gz"), "--max-payload-mb", "1") as srv:
        run = subprocess.run(
            [str(schemathesis), "run", str(DOCUMENT), "--url", srv.url, "--checks",
             "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
             "--max-examples", "25", "--seed", "1", "--workers", "2", "--request-timeout", "20",
             "--max-response-time", "10", "--phases", "examples,coverage,fuzzing", "--no-color",
             "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        print(run.stdout[-3000:])
        assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
        assert requests.get(srv.url + "/ping", timeout=5).status_code == 200


def test_fuzzing_a_multi_model_endpoint_finds_no_server_error_and_no_hang(demo_dir, tmp_path):
    """The /models API of a multi-model endpoint with a model loaded: random names, folders and bodies."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(demo_dir / "rnn", root / "rnn")
    schemathesis = Path(sys.executable).parent / "schemathesis"
    with running_server(tmp_path, "--workers", "2", env={"SAGEMAKER_MULTI_MODEL": "true",
                                                          "SERVING_MODELS_ROOT": str(root)}) as srv:
        loaded = requests.post(srv.url + "/models", json={"model_name": "lstm", "url": str(root / "rnn")}, timeout=60)
        assert loaded.status_code == 200, loaded.text
        run = subprocess.run(
            [str(schemathesis), "run", str(DOCUMENT), "--url", srv.url, "--include-path-regex", "^/models",
             "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
             "response_schema_conformance", "--max-examples", "25", "--seed", "1", "--workers", "2",
             "--request-timeout", "20", "--max-response-time", "10", "--phases", "examples,coverage,fuzzing",
             "--no-color", "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path)
        print(run.stdout[-3000:])
        assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
        # it may have unloaded "lstm" (it learns names from answers): the server loads and serves afterwards
        again = requests.post(srv.url + "/models", json={"model_name": "after", "url": "rnn"}, timeout=60)
        assert again.status_code == 200, again.text
        assert requests.post(srv.url + "/models/after/invoke", json={"inputs": ["hi"]}, timeout=10).status_code == 200
