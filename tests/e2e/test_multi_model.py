"""A multi-model endpoint (SAGEMAKER_MULTI_MODEL=true): the real `serve` with two front ends and an engine on the CPU,
models loaded, invoked, described and unloaded over HTTP and through boto3's TargetModel."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import psutil
import pytest
import requests
from botocore.config import Config

from tests.e2e.conftest import running_server

TEXTS = ["you are an idiot", "thanks, that helped a lot", "I will find where you live", "what a lovely day",
         "shut up, loser", "the meeting moved to Tuesday"]
LONG = [" ".join(TEXTS * 8)] * 8  # forwards long enough that requests queue behind each other
MODELS = {"rob-a": "roberta", "rob-b": "roberta", "lstm-a": "rnn", "lstm-b": "rnn"}


def make_root(root: Path, demo_dir: Path) -> Path:
    """SageMaker's /opt/ml/models: one folder per model (copies: a link out of the root is refused)."""
    root.mkdir(parents=True, exist_ok=True)
    for family in ("roberta", "rnn"):
        shutil.copytree(demo_dir / family, root / family, dirs_exist_ok=True)
    return root


def mme_server(tmp_path: Path, root: Path, *args: str, env: dict | None = None):
    return running_server(tmp_path, "--workers", "2", *args,
                          env={"SAGEMAKER_MULTI_MODEL": "true", "SERVING_MODELS_ROOT": str(root), **(env or {})})


def load(url: str, name: str, folder: str, timeout: float = 120) -> requests.Response:
    return requests.post(url + "/models", json={"model_name": name, "url": folder}, timeout=timeout)


def invoke(url: str, name: str, texts: list[str], timeout: float = 30) -> requests.Response:
    return requests.post(f"{url}/models/{name}/invoke", json={"inputs": texts}, timeout=timeout)


def scores(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([list(p["scores"].values()) for p in response.json()["predictions"]])


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


@pytest.fixture(scope="module")
def mme(demo_dir, tmp_path_factory):
    """The server with the four models loaded; what /ping and /models said before any was loaded is kept."""
    work = tmp_path_factory.mktemp("mme")
    root = make_root(work / "models", demo_dir)
    with mme_server(work, root) as server:
        server.root = root
        server.empty_ping = requests.get(server.url + "/ping", timeout=5).status_code
        server.empty_list = requests.get(server.url + "/models", timeout=5).json()
        server.loads = {name: load(server.url, name, str(root / family)) for name, family in MODELS.items()}
        yield server


@pytest.fixture(scope="module")
def single_model_scores(demo_dir):
    """What single-model serving scores (the same loader and backend choice `serve` makes on the CPU)."""
    from serving.artifacts import load_classifier

    return {family: load_classifier(demo_dir / family).predict(TEXTS) for family in ("roberta", "rnn")}


def test_the_server_starts_with_no_model_and_pings_200(mme):
    assert mme.empty_ping == 200
    assert mme.empty_list == {"models": []}
    assert {name: r.status_code for name, r in mme.loads.items()} == dict.fromkeys(MODELS, 200), \
        {name: r.text for name, r in mme.loads.items()}


def test_four_models_score_as_single_model_serving_does(mme, single_model_scores):
    runtime = boto3.client("sagemaker-runtime", endpoint_url=mme.url, region_name="us-east-1",
                           aws_access_key_id="dummy", aws_secret_access_key="dummy",
                           config=Config(retries={"max_attempts": 0}))
    for name, family in MODELS.items():
        expected = single_model_scores[family]
        np.testing.assert_allclose(scores(invoke(mme.url, name, TEXTS)), expected, rtol=1e-4, atol=1e-5)
        answer = runtime.invoke_endpoint(EndpointName="toxicity", TargetModel=name, ContentType="application/json",
                                         Accept="application/json", Body=json.dumps({"inputs": TEXTS}))
        body = json.loads(answer["Body"].read())
        got = np.array([list(p["scores"].values()) for p in body["predictions"]])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # every content type and Accept of /invocations works on a model's own route too
    csv = requests.post(f"{mme.url}/models/lstm-a/invoke", data="\n".join([TEXTS[0], TEXTS[2], TEXTS[3]]),
                        headers={"Content-Type": "text/csv", "Accept": "text/csv"}, timeout=30)
    assert csv.status_code == 200 and len(csv.text.strip().splitlines()) == 3, csv.text


def test_models_are_listed_and_described(mme):
    listed = requests.get(mme.url + "/models", timeout=5).json()
    assert sorted(m["modelName"] for m in listed["models"]) == sorted(MODELS)
    assert all(Path(m["modelUrl"]).parent == mme.root.resolve() for m in listed["models"])
    for name, family in MODELS.items():
        described = requests.get(f"{mme.url}/models/{name}", timeout=5).json()
        assert described["family"] == family and described["state"] == "ready"
        assert described["device"] == "cpu" and described["backend"]
        assert described["labels"][0] == "toxicity" and len(described["labels"]) == 7
        assert described["memory"]["estimated"]["host_bytes"] > described["memory"]["estimated"]["weights_bytes"] > 0
        assert len(described["memory"]["measured_per_engine"]) == 1


def test_bad_loads_and_unknown_models_are_refused_clearly_and_the_server_keeps_serving(mme, tmp_path):
    url, root = mme.url, mme.root
    outside = tmp_path / "outside"
    shutil.copytree(root / "rnn", outside)
    (root / "escape").unlink(missing_ok=True)
    (root / "escape").symlink_to(outside)
    (root / "empty").mkdir(exist_ok=True)
    cases = [
        (load(url, "rob-a", str(root / "roberta")), 409, "model_already_loaded"),
        (load(url, "new", str(root / "empty")), 404, "model_not_found"),
        (load(url, "new", str(root / "nothing-here")), 404, "model_not_found"),
        (load(url, "../x", str(root / "rnn")), 400, "bad_request"),
        (load(url, "a/b", str(root / "rnn")), 400, "bad_request"),
        (load(url, "new", str(outside)), 400, "bad_request"),
        (load(url, "new", "../outside"), 400, "bad_request"),
        (load(url, "new", str(root / "escape")), 400, "bad_request"),  # a link inside the root that leaves it
        (requests.post(url + "/models", data="{not json", timeout=5), 400, "bad_request"),
        (requests.post(url + "/models", json=["rob"], timeout=5), 400, "bad_request"),
        (invoke(url, "missing", TEXTS), 404, "model_not_found"),
        (requests.post(url + "/invocations", json={"inputs": TEXTS}, timeout=5), 400, "bad_request"),
        (requests.post(url + "/invocations", json={"inputs": TEXTS}, timeout=5,
                       headers={"X-Amzn-SageMaker-Target-Model": "../../x"}), 400, "bad_request"),
        (requests.get(url + "/models/missing", timeout=5), 404, "model_not_found"),
        (requests.delete(url + "/models/missing", timeout=5), 404, "model_not_found"),
        (invoke(url, "lstm-a", []), 400, "bad_request"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
    assert "new" not in [m["modelName"] for m in requests.get(url + "/models", timeout=5).json()["models"]]
    assert invoke(url, "lstm-a", TEXTS[:1]).status_code == 200


def test_loading_a_model_does_not_stall_the_others(mme):
    """Requests to a loaded model keep being answered while another loads and warms up on the same engine."""
    answered: list[tuple[float, int]] = []
    stop = threading.Event()

    def traffic() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(f"{mme.url}/models/lstm-b/invoke", json={"inputs": TEXTS[:2]}, timeout=30)
                answered.append((time.monotonic(), response.status_code))

    thread = threading.Thread(target=traffic)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    loaded = load(mme.url, "rob-late", str(mme.root / "roberta"))
    ended = time.monotonic()
    stop.set()
    thread.join(30)
    assert loaded.status_code == 200, loaded.text
    during = [status for at, status in answered if started < at < ended]
    assert set(status for _, status in answered) == {200}
    assert len(during) >= 3, (len(during), ended - started)
    assert requests.delete(mme.url + "/models/rob-late", timeout=60).status_code == 200


def test_two_loads_of_one_name_at_once_load_it_once(mme):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: load(mme.url, "twice", str(mme.root / "rnn")), range(2)))
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    assert invoke(mme.url, "twice", TEXTS[:1]).status_code == 200
    assert requests.delete(mme.url + "/models/twice", timeout=60).status_code == 200


def test_twenty_load_unload_cycles_leave_memory_flat(mme):
    def cycle() -> None:
        assert load(mme.url, "cycled", str(mme.root / "roberta")).status_code == 200
        for _ in range(4):  # through both front ends, most likely: each builds its text side
            assert invoke(mme.url, "cycled", TEXTS[:2]).status_code == 200
        assert requests.delete(mme.url + "/models/cycled", timeout=60).status_code == 200

    for _ in range(3):  # the first loads import libraries and fill caches once
        cycle()
    before = tree_rss(mme.process.pid)
    for _ in range(20):
        cycle()
    after = tree_rss(mme.process.pid)
    assert after < before * 1.05, f"resident memory grew {before / 2**20:.0f} -> {after / 2**20:.0f} MiB"


def test_per_model_metrics(mme):
    assert invoke(mme.url, "lstm-a", TEXTS[:1]).status_code == 200
    lines = ('toxserve_model_requests_total{model="lstm-a",status="200"}',
             'toxserve_model_request_latency_seconds_count{model="lstm-a"}',
             'toxserve_model_batch_size_count{model="rob-a"}',
             'toxserve_model_load_seconds_by_model{model="rob-b"}',
             'toxserve_model_memory_bytes{model="lstm-b"}')
    page = mme.metrics(lambda page: all(line in page for line in lines))
    for line in lines:
        assert line in page, line
    assert 'model="missing"' not in page  # a name sent that is not loaded makes no series


def test_a_killed_engine_comes_back_with_every_model(mme):
    [engine] = [p for p in psutil.Process(mme.process.pid).children(recursive=True)
                if "serving.engine" in " ".join(p.cmdline())]
    engine.kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (requests.get(mme.url + "/ping", timeout=5).status_code == 200
                and all(invoke(mme.url, name, TEXTS[:1]).status_code == 200 for name in MODELS)):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the models did not come back:\n{mme.log()[-3000:]}")
    assert sorted(m["modelName"] for m in requests.get(mme.url + "/models", timeout=5).json()["models"]) \
        == sorted(MODELS)


@pytest.fixture(scope="module")
def slow(demo_dir, tmp_path_factory):
    """Simulated forwards of 40 ms (requests queue behind each other) and a memory budget with room for one RoBERTa
    and one LSTM."""
    from serving.catalog import estimate_footprint

    work = tmp_path_factory.mktemp("mme-slow")
    root = make_root(work / "models", demo_dir)
    needs = [estimate_footprint(root / family, family, 4096, 32, on_gpu=False) for family in ("roberta", "rnn")]
    budget_mb = sum(n["host_bytes"] + n["device_bytes"] for n in needs) / 2**20 + 1
    with mme_server(work, root, "--backend", "sim", "--sim-fixed-ms", "40",
                    env={"SERVING_MODELS_MEMORY_MB": str(budget_mb)}) as server:
        server.root = root
        yield server


def test_unloading_a_model_under_traffic_loses_no_request(slow):
    """DELETE while two models take traffic and requests queue: the other model's requests all succeed, the unloaded
    one's queued requests are answered, later ones get 404, none fails or hangs; the name can be reused."""
    assert load(slow.url, "lstm-a", str(slow.root / "rnn")).status_code == 200
    assert load(slow.url, "rob-gone", str(slow.root / "roberta")).status_code == 200
    over = load(slow.url, "rob-over", str(slow.root / "roberta"))
    assert over.status_code == 507 and over.json()["error"]["code"] == "insufficient_memory", over.text
    assert "budget" in over.json()["error"]["message"]
    assert requests.get(slow.url + "/models/rob-over", timeout=5).status_code == 404
    outcomes: list[tuple[str, list]] = [(name, []) for name in ("lstm-a", "rob-gone") for _ in range(4)]
    stop = threading.Event()

    def traffic(name: str, seen: list) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    response = session.post(f"{slow.url}/models/{name}/invoke", json={"inputs": LONG}, timeout=30)
                    seen.append(response.status_code)
                except requests.RequestException as exc:
                    seen.append(type(exc).__name__)

    threads = [threading.Thread(target=traffic, args=pair) for pair in outcomes]
    for t in threads:
        t.start()
    time.sleep(1.0)
    deleted = requests.delete(slow.url + "/models/rob-gone", timeout=60)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["freed"][0]["drained"] is True
    for name, seen in outcomes:
        if name == "lstm-a":
            assert set(seen) == {200}, seen
        else:  # each client's requests in order: answered until the unload, then 404
            assert set(seen) <= {200, 404} and seen[0] == 200 and seen[-1] == 404, seen
            assert seen == sorted(seen), f"a 200 after a 404: {seen}"
    assert "rob-gone" not in [m["modelName"] for m in requests.get(slow.url + "/models", timeout=5).json()["models"]]
    assert load(slow.url, "rob-over", str(slow.root / "roberta")).status_code == 200  # unloading made room
    assert load(slow.url, "rob-gone", str(slow.root / "roberta")).status_code == 507
    assert requests.delete(slow.url + "/models/lstm-a", timeout=60).status_code == 200
    assert load(slow.url, "rob-gone", str(slow.root / "rnn")).status_code == 200  # the name is free again
    assert requests.get(slow.url + "/models/rob-gone", timeout=5).json()["family"] == "rnn"




def test_sigterm_during_traffic_to_a_model_drains_and_loses_nothing(demo_dir, tmp_path):
    from tests.e2e.conftest import sigterm_under_load

    root = make_root(tmp_path / "models", demo_dir)
    with mme_server(tmp_path, root, "--backend", "sim", "--sim-fixed-ms", "30", "--max-batch-size", "4") as server:
        assert load(server.url, "lstm", str(root / "rnn")).status_code == 200
        code, took, results = sigterm_under_load(server, lambda i: [f"{TEXTS[i % len(TEXTS)]} {i}"] * 4,
                                                 path="/models/lstm/invoke")
        answered = [r for r in results if r[0] == "answered"]
        assert code == 0 and took < 25, (code, took, server.log()[-2000:])
        assert answered and all(status == 200 and n == 4 for _, status, n in answered), results
        assert "engine 0 stopped" in server.log()
