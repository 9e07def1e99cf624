"""Counters and histograms in multiprocess mode add up in memory and reach the process's file every FLUSH_S, at
exit, and before the process renders /metrics; gauges are written at once; a forked child never writes what its
parent added. Each case runs in a fresh interpreter: prometheus_client picks its mode at import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

READ = """
from prometheus_client import CollectorRegistry, multiprocess
def read(name):
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)
"""


def run(folder: Path, code: str) -> str:
    result = subprocess.run([sys.executable, "-c", READ + textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=60, env={"PROMETHEUS_MULTIPROC_DIR": str(folder), "PATH": "/usr/bin:/bin"},
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "prom").mkdir()
    return tmp_path / "prom"


def test_counts_reach_the_files_within_the_flush_interval_with_no_further_traffic(folder):
    out = run(folder, """
        import time
        from serving import metrics
        for _ in range(1000):
            metrics.texts.inc()
            metrics.request_latency.labels("/invocations").observe(0.003)
        metrics.engine_queue.labels("0").set(7)
        print(read("toxserve_texts_total"), read("toxserve_engine_queue_texts"))  # nothing written yet but the gauge
        time.sleep(metrics.FLUSH_S * 3)
        print(read("toxserve_texts_total"), read("toxserve_request_latency_seconds_count"))
    """)
    assert out.split() == ["0.0", "7.0", "1000.0", "1000.0"]


def test_what_a_process_added_is_written_when_it_exits_and_when_it_renders(folder):
    run(folder, """
        from serving import metrics
        metrics.texts.inc(5)
        page, _ = metrics.render()  # this process's own counts, at once
        assert b"toxserve_texts_total 5.0" in page, page
        metrics.texts.inc(2)
    """)
    assert run(folder, "print(read('toxserve_texts_total'))").strip() == "7.0"


def test_a_forked_child_does_not_write_its_parents_counts_again(folder):
    run(folder, """
        import os
        from serving import metrics
        metrics.texts.inc(3)  # the parent's, not yet written
        child = os.fork()
        if child == 0:
            metrics.texts.inc(1)
            metrics.flush()
            os._exit(0)
        os.waitpid(child, 0)
    """)
    assert run(folder, "print(read('toxserve_texts_total'))").strip() == "4.0"


def test_a_write_that_fails_keeps_its_counts_for_the_next_flush_and_the_flusher_lives_on(folder):
    out = run(folder, """
        import time
        from serving import metrics
        write = metrics.values.ValueClass.write
        failures = []

        def fails_twice(value, amount):
            if len(failures) < 2:
                failures.append(1)
                raise OSError("metrics folder gone")
            write(value, amount)

        metrics.values.ValueClass.write = fails_twice
        metrics.texts.inc(3)
        metrics.flush()  # fails, and does not raise
        time.sleep(metrics.FLUSH_S * 4)  # the thread's first flush fails too, a later one writes
        print(len(failures), read("toxserve_texts_total"))
    """)
    assert out.split() == ["2", "3.0"]


def test_a_child_that_forks_again_does_not_wait_forever(folder):
    run(folder, """
        import os
        from serving import metrics
        metrics.texts.inc(1)
        child = os.fork()
        if child == 0:
            grandchild = os.fork()  # takes the child's own lock, not the one held in the parent at the first fork
            if grandchild == 0:
                os._exit(0)
            os.waitpid(grandchild, 0)
            os._exit(0)
        os.waitpid(child, 0)
    """)
