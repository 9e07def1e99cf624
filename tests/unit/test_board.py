"""The engines' status board, read by one process while another writes it."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from serving.board import Board, EngineState
from serving.catalog import Catalog


def _write_as_an_engine_does(run_dir: str, stop) -> None:
    board = Board.open(Path(run_dir))
    while not stop.is_set():
        for _ in range(500):
            board.beat(0)
            board.forward(0, time.monotonic())
            board.set_queued(0, 3)
            board.forward(0, 0.0)
            board.set_queued(0, 0)
            board.write(0, pid=4321, state=EngineState.READY)


def test_a_reader_on_another_core_never_sees_a_field_half_written(tmp_path):
    """A live engine's heartbeat, forwards and queue depth change all the time; a front end reading the board at any
    moment must see it serving, with its pid and a queue depth it wrote (a half-written heartbeat of 0 made it look
    hung: a 503 for a request the engine would have answered)."""
    board = Board.create(tmp_path, 1)
    board.write(0, pid=4321, state=EngineState.READY, queued_texts=0)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    writer = context.Process(target=_write_as_an_engine_does, args=(str(tmp_path), stop))
    writer.start()
    try:
        first = board.read(0).heartbeat
        started = time.monotonic()
        while board.read(0).heartbeat == first:  # until the writer is busy
            assert time.monotonic() - started < 60 and writer.is_alive(), "the writer did not start"
            time.sleep(0.01)
        wrong, reads, beats = [], 0, set()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            status = board.read(0)
            reads += 1
            beats.add(status.heartbeat)
            if not status.serving or status.pid != 4321 or status.queued_texts not in (0, 3):
                wrong.append(status)
        assert writer.is_alive(), "the writer stopped: the reads raced nothing"
    finally:
        stop.set()
        writer.join(10)
        if writer.is_alive():
            writer.kill()
    assert writer.exitcode == 0
    assert reads > 10_000 and len(beats) > 100, (reads, len(beats))  # read while it wrote, all along
    assert not wrong, f"{len(wrong)} of {reads} reads, e.g. {wrong[:3]}"


def test_the_catalog_version_is_shared(tmp_path):
    reader, writer = Catalog(tmp_path), Catalog(tmp_path)
    assert reader.version == 0
    with writer.editing():
        pass
    assert reader.version == writer.version == 1
