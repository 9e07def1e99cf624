"""Locust users for the invocation endpoint: plain HTTP to any host's /invocations, or SageMaker via boto3.

Settings come from the environment (Locust owns the command line):
  LOADTEST_CORPUS             texts: CSV (comment_text/text column) or JSONL; default the demo corpus
  LOADTEST_TEXTS_PER_REQUEST  texts per request (default 1)
  LOADTEST_ENDPOINT           SageMaker endpoint name (SageMakerUser)
  LOADTEST_REGION             its region (default us-east-1)
  LOADTEST_RUNTIME_URL        override the sagemaker-runtime URL (tests against a local server)
  LOADTEST_TARGET_MODELS      a multi-model endpoint's models and their popularity, NAME[:WEIGHT],... (weight
                              default 1), e.g. toxic-a:70,toxic-b:20,lstm-a:5,lstm-b:5; each request names one,
                              drawn by weight: the X-Amzn-SageMaker-Target-Model header (InvocationsUser) or
                              TargetModel (SageMakerUser), and is reported as "... [NAME]" so Locust's stats
                              show each model's latency; a malformed value fails the import with a ValueError

    locust -f loadtest/locustfile.py --headless -u 16 -r 16 -t 60s --host http://127.0.0.1:8080 InvocationsUser
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import time
from pathlib import Path

from locust import FastHttpUser, User, constant, task

DEMO_CORPUS = Path(__file__).resolve().parent.parent / "model_artifacts" / "data" / "comments.csv"


def load_texts(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        if path.suffix == ".csv":
            rows = list(csv.DictReader(f))
            key = next(k for k in ("comment_text", "text", "inputs") if k in rows[0])
            return [row[key] for row in rows]
        records = [json.loads(line) for line in f if line.strip()]
    return [r if isinstance(r, str) else next(r[k] for k in ("comment_text", "text", "inputs") if k in r)
            for r in records]


TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_target_models(spec: str) -> list[tuple[str, float]]:
    """`NAME[:WEIGHT],...` to (name, weight) pairs; empty means a single-model endpoint.

    Strict, because a typo here would otherwise show up only as a run of failed requests."""
    if not spec.strip():
        return []
    models: list[tuple[str, float]] = []
    for entry in spec.split(","):
        name, colon, weight_text = entry.strip().partition(":")
        name = name.strip()
        if not MODEL_NAME.fullmatch(name):
            raise ValueError(f"LOADTEST_TARGET_MODELS entry {entry.strip()!r}: the name must match "
                             f"{MODEL_NAME.pattern} (in {spec!r})")
        try:
            weight = float(weight_text) if colon else 1.0
        except ValueError:
            weight = math.nan
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"LOADTEST_TARGET_MODELS entry {entry.strip()!r}: the weight must be a positive "
                             f"number (in {spec!r})")
        if name in (known for known, _ in models):
            raise ValueError(f"LOADTEST_TARGET_MODELS names {name!r} twice (in {spec!r})")
        models.append((name, weight))
    return models


def choose_model(models: list[tuple[str, float]], rng: random.Random) -> str:
    """One model drawn in proportion to its weight, with the caller's rng (each Locust user has its own)."""
    return rng.choices([name for name, _ in models], weights=[weight for _, weight in models])[0]


TEXTS = load_texts(Path(os.environ.get("LOADTEST_CORPUS", DEMO_CORPUS)))
TEXTS_PER_REQUEST = int(os.environ.get("LOADTEST_TEXTS_PER_REQUEST", "1"))
TARGET_MODELS = parse_target_models(os.environ.get("LOADTEST_TARGET_MODELS", ""))


def next_body(rng: random.Random) -> str:
    return json.dumps({"inputs": rng.sample(TEXTS, TEXTS_PER_REQUEST)})


class InvocationsUser(FastHttpUser):
    """POSTs JSON to {host}/invocations (a local container, `docker run`, any host); non-200 is a failure."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random(id(self))

    @task
    def invoke(self) -> None:
        headers, name = {"Content-Type": "application/json"}, "/invocations"
        if TARGET_MODELS:
            model = choose_model(TARGET_MODELS, self.rng)
            headers[TARGET_MODEL_HEADER], name = model, f"/invocations [{model}]"
        with self.client.post("/invocations", data=next_body(self.rng), name=name, headers=headers,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")


class SageMakerUser(User):
    """Calls a SageMaker endpoint with boto3 invoke_endpoint (SigV4) and reports to Locust's request events."""

    wait_time = constant(0)

    def on_start(self) -> None:
        import boto3
        from botocore.config import Config

        self.rng = random.Random(id(self))
        self.endpoint = os.environ["LOADTEST_ENDPOINT"]
        self.runtime = boto3.client(
            "sagemaker-runtime", region_name=os.environ.get("LOADTEST_REGION", "us-east-1"),
            endpoint_url=os.environ.get("LOADTEST_RUNTIME_URL") or None,
            config=Config(retries={"max_attempts": 0}, max_pool_connections=64),
        )

    @task
    def invoke(self) -> None:
        extra, name = {}, self.endpoint
        if TARGET_MODELS:
            model = choose_model(TARGET_MODELS, self.rng)
            extra, name = {"TargetModel": model}, f"{self.endpoint} [{model}]"
        body = next_body(self.rng)
        started = time.perf_counter()
        length, error = 0, None
        try:
            response = self.runtime.invoke_endpoint(EndpointName=self.endpoint, Body=body, **extra,
                                                    ContentType="application/json", Accept="application/json")
            length = len(response["Body"].read())
        except Exception as exc:  # botocore raises one class per service error; all count as failures
            error = exc
        self.environment.events.request.fire(
            request_type="invoke_endpoint", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=length, exception=error, context={},
        )
