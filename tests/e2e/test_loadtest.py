"""The load-test runner against the real local server: short bounded steps on loopback only."""

from __future__ import annotations

import csv

import pytest

from loadtest.runner import main as runner
from tests.e2e.conftest import running_server


def read_steps(out):
    return list(csv.DictReader((out / "steps.csv").open()))


def test_runner_reports_plausible_figures_on_a_healthy_server(demo_dir, tmp_path):
    out = tmp_path / "report"
    with running_server(tmp_path, "--model-dir", str(demo_dir / "rnn")) as server:
        runner(["--target", f"ml.c7g.large={server.url}", "--users", "1,4", "--step-seconds", "4",
                "--p99-ms", "2000", "--peak-rps", "50", "--out", str(out)])
    steps = read_steps(out)
    assert [int(s["users"]) for s in steps] == [1, 4]
    for s in steps:
        assert float(s["rps"]) > 0 and float(s["failure_share"]) == 0
        assert float(s["p50_ms"]) <= float(s["p90_ms"]) <= float(s["p99_ms"])
    markdown = (out / "report.md").read_text()
    assert "## Recommendation" in markdown and "x ml.c7g.large" in markdown
    for name in ("latency_vs_throughput.png", "cost_vs_p99.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_failures_are_counted_and_stop_the_sweep_when_overloaded(demo_dir, tmp_path):
    out = tmp_path / "report"
    with running_server(tmp_path, "--model-dir", str(demo_dir / "roberta"), "--max-queue-texts", "1",
                        "--workers", "1") as server:
        runner(["--target", f"tiny-queue={server.url}", "--users", "16,32", "--step-seconds", "4",
                "--texts-per-request", "1", "--out", str(out)])
    steps = read_steps(out)
    assert len(steps) == 1 and float(steps[0]["failure_share"]) > 0.01  # 429s counted; the sweep stopped


def test_the_sagemaker_user_class_through_boto3(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
    out = tmp_path / "report"
    with running_server(tmp_path, "--model-dir", str(demo_dir / "rnn")) as server:
        monkeypatch.setenv("LOADTEST_RUNTIME_URL", server.url)
        runner(["--target", "sm=sagemaker:toxicity@us-east-1", "--users", "2", "--step-seconds", "4",
                "--p99-ms", "2000", "--out", str(out)])
    (step,) = read_steps(out)
    assert float(step["rps"]) > 0 and float(step["failure_share"]) == 0


@pytest.mark.parametrize("spec", ["nolabel", "x=ftp://nowhere"])
def test_bad_targets_fail_loudly(spec, tmp_path):
    with pytest.raises(ValueError, match="expected LABEL="):
        runner(["--target", spec, "--users", "1", "--step-seconds", "1", "--out", str(tmp_path)])


def test_a_short_soak_has_no_errors_and_flat_memory(tmp_path):
    """CI's short version (30 s) of loadtest/soak.py (the 30-minute run is in BENCHMARKS.md)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(REPO / "loadtest" / "soak.py"), "--minutes", "0.5", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    assert run.returncode == 0, (run.stdout, run.stderr[-2000:])
    assert report["unexpected"] == 0 and report["requests"] > 300 and report["rss_growth"] < 0.10
