"""The engines' status board: one small memory-mapped file the supervisor, the engines and the front ends share.

Each engine has a slot: its pid (which also names its generation: a restarted engine has a new pid), its state,
the texts waiting in its queue, and a heartbeat. Front ends read it on every request (admission at the door,
choosing an engine) and for /ping, without asking the engines anything, so neither a saturated engine nor a dead
one can slow those answers. An engine's load error, for /ping, goes to a text file beside it.
"""

from __future__ import annotations

import enum
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path

RUN_DIR_ENV = "TOXSERVE_RUN_DIR"  # the server's private run folder: settings, this board, the channel's sockets
SIM_DEVICE_ENV = "SERVING_SIM_DEVICE"  # set in each process pinned to a simulated accelerator: its index
# A slot's fields, 8 bytes each: pid, state, queued texts, restarts (integers); heartbeat, forward started (floats,
# time.monotonic())
PID, STATE, QUEUED, RESTARTS, HEARTBEAT, FORWARD = range(6)
SLOT_FIELDS = 6
SLOT_BYTES = 8 * SLOT_FIELDS
BOARD_FILE = "board"
STALE_S = 10.0  # a ready engine whose heartbeat is older is hung: front ends stop sending, the supervisor kills it
# A forward running longer is stuck (a hung kernel, a lost device: the heartbeat thread beats on, since device calls
# release the GIL); every request it holds is past its deadline long before.
STUCK_S = 120.0


class EngineState(enum.IntEnum):
    STARTING = 0  # loading and warming up the model
    READY = 1
    FAILED = 2  # the model could not be loaded; not restarted (the folder will not fix itself)
    DEAD = 3  # exited or killed; the supervisor is starting a new one
    STOPPING = 4  # draining after SIGTERM: finishes what it queued, takes nothing new


STATES = {state.value: state for state in EngineState}  # a front end reads every engine's state per request


@dataclass(frozen=True, slots=True)
class EngineStatus:
    index: int
    pid: int
    state: EngineState
    queued_texts: int
    restarts: int
    heartbeat: float
    forward_since: float = 0.0  # when the running forward started; 0 while none runs

    @property
    def serving(self) -> bool:
        """Ready, its heartbeat thread alive within STALE_S, and no forward stuck (running over STUCK_S)."""
        now = time.monotonic()
        return (self.state == EngineState.READY and now - self.heartbeat < STALE_S
                and not (self.forward_since and now - self.forward_since > STUCK_S))


class Board:
    """The mapped file; `create` in the supervisor before any engine or front end starts, `open` elsewhere."""

    def __init__(self, path: Path, engines: int) -> None:
        self.path = path
        self.engines = engines
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), SLOT_BYTES * engines)
        self._ints, self._floats = int_fields(self._map), float_fields(self._map)

    @classmethod
    def create(cls, run_dir: Path, engines: int) -> Board:
        path = run_dir / BOARD_FILE
        path.write_bytes(b"\0" * SLOT_BYTES * engines)
        os.chmod(path, 0o600)
        return cls(path, engines)

    @classmethod
    def open(cls, run_dir: Path) -> Board:
        path = run_dir / BOARD_FILE
        return cls(path, path.stat().st_size // SLOT_BYTES)

    def read(self, index: int) -> EngineStatus:
        ints, floats, slot = self._ints, self._floats, index * SLOT_FIELDS
        return EngineStatus(index, ints[slot + PID], STATES[ints[slot + STATE]], ints[slot + QUEUED],
                            ints[slot + RESTARTS], floats[slot + HEARTBEAT], floats[slot + FORWARD])

    def all(self) -> list[EngineStatus]:
        return [self.read(i) for i in range(self.engines)]

    def write(self, index: int, *, pid: int | None = None, state: EngineState | None = None,
              queued_texts: int | None = None, restarts: int | None = None) -> None:
        ints, floats, slot = self._ints, self._floats, index * SLOT_FIELDS
        for field, value in ((PID, pid), (QUEUED, queued_texts), (RESTARTS, restarts)):
            if value is not None:
                ints[slot + field] = value
        floats[slot + HEARTBEAT] = time.monotonic()
        floats[slot + FORWARD] = 0.0
        if state is not None:  # last: a reader that sees the new state sees the rest too
            ints[slot + STATE] = state

    def set_queued(self, index: int, queued_texts: int) -> None:
        """The engine's hot path: its queue depth only (one field, no read-modify-write)."""
        self._ints[index * SLOT_FIELDS + QUEUED] = queued_texts

    def forward(self, index: int, started: float) -> None:
        """The engine, around each forward: when it started (0 when it ended)."""
        self._floats[index * SLOT_FIELDS + FORWARD] = started

    def beat(self, index: int) -> None:
        """The engine's heartbeat thread: alive (a forward may hold the I/O thread, never this one for long)."""
        self._floats[index * SLOT_FIELDS + HEARTBEAT] = time.monotonic()


def int_fields(mapped: mmap.mmap) -> memoryview[int]:
    """A mapped file as native int64 fields: each is read and written as one aligned 8-byte copy, which a process on
    another core never sees half done. struct.pack_into clears a field before it fills it in: a front end reading
    the board in between saw an engine's heartbeat at 0, a live engine as hung, and answered 503 (BENCHMARKS.md)."""
    return memoryview(mapped).cast("q")


def float_fields(mapped: mmap.mmap) -> memoryview[float]:
    """The same as float64 fields."""
    return memoryview(mapped).cast("d")


def error_path(run_dir: Path, index: int) -> Path:
    return run_dir / f"engine-{index}.error"


def socket_address(run_dir: Path, index: int) -> str:
    """The path of the Unix socket engine `index` listens on."""
    return str(run_dir / f"engine-{index}.sock")
