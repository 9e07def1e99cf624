"""Shared fixtures: the demo models (built once if missing) and small helpers."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO / "model_artifacts" / "demo"
CORPUS = REPO / "model_artifacts" / "data" / "comments.csv"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def model_artifacts_script(name: str):
    """A script of model_artifacts/ (make_corpus, build_demo: scripts, not a package) imported as a module."""
    sys.path.insert(0, str(REPO / "model_artifacts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "model_artifacts"))


def within_one_edit(a: Sequence[str], b: Sequence[str]) -> bool:
    """Word sequences (lists or tuples) equal but for one substituted, inserted or dropped word."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) <= 1
    short, long = sorted((a, b), key=len)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """model_artifacts/demo, built by the same script the set-up command runs when it is missing."""
    if not (DEMO_DIR / "metrics.json").exists():
        model_artifacts_script("build_demo").main(["--out", str(DEMO_DIR)])
    return DEMO_DIR


@pytest.fixture(scope="session")
def roberta_dir(demo_dir: Path) -> Path:
    return demo_dir / "roberta"


@pytest.fixture(scope="session")
def rnn_dir(demo_dir: Path) -> Path:
    return demo_dir / "rnn"
