"""Scoring through a running endpoint: any URL's /invocations, or a SageMaker endpoint through boto3."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np


class EndpointScorer:
    """Texts in, per-label scores out, from a live endpoint, in batches (labels as the endpoint names them)."""

    def __init__(self, url: str | None = None, endpoint_name: str | None = None, region: str | None = None,
                 endpoint_url: str | None = None, batch_size: int = 32, timeout_s: float = 60.0) -> None:
        if bool(url) == bool(endpoint_name):
            raise ValueError("give exactly one of a URL or a SageMaker endpoint name")
        self.url = url.rstrip("/") if url else None
        self.endpoint_name = endpoint_name
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.labels: list[str] = []
        self._runtime = None
        if endpoint_name:
            import boto3

            self._runtime = boto3.client("sagemaker-runtime", region_name=region, endpoint_url=endpoint_url)

    def invoke(self, texts: Sequence[str]) -> list[dict]:
        """One request: the `predictions` of our JSON schema."""
        body = json.dumps({"inputs": list(texts)})
        if self._runtime is not None:
            response = self._runtime.invoke_endpoint(EndpointName=self.endpoint_name, Body=body,
                                                     ContentType="application/json", Accept="application/json")
            return json.loads(response["Body"].read())["predictions"]
        import requests

        response = requests.post(f"{self.url}/invocations", data=body, timeout=self.timeout_s,
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
        if response.status_code != 200:
            raise RuntimeError(f"{self.url} answered {response.status_code}: {response.text[:300]}")
        return response.json()["predictions"]

    def predict(self, texts: Sequence[str], progress=None) -> np.ndarray:
        """(n, labels) scores in input order; `progress` wraps the batch iterator (e.g. tqdm)."""
        starts = range(0, len(texts), self.batch_size)
        rows: list[list[float]] = []
        for start in progress(starts) if progress else starts:
            for prediction in self.invoke(texts[start : start + self.batch_size]):
                self.labels = self.labels or list(prediction["scores"])
                rows.append([prediction["scores"][label] for label in self.labels])
        return np.array(rows, dtype=np.float32)
