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
import struct
import time
from dataclasses import dataclass
from pathlib import Path

RUN_DIR_ENV = "TOXSERVE_RUN_DIR"  # the server's private run folder: settings, this board, the channel's sockets
SIM_DEVICE_ENV = "SERVING_SIM_DEVICE"  # set in each process pinned to a simulated accelerator: its index
SLOT = struct.Struct("<qqqqdd")  # pid, state, queued texts, restarts, heartbeat, forward started (monotonic)
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
        self._map = mmap.mmap(self._file.fileno(), SLOT.size * engines)

    @classmethod
    def create(cls, run_dir: Path, engines: int) -> Board:
        path = run_dir / BOARD_FILE
        path.write_bytes(b"\0" * SLOT.size * engines)
        os.chmod(path, 0o600)
        return cls(path, engines)

    @classmethod
    def open(cls, run_dir: Path) -> Board:
        path = run_dir / BOARD_FILE
        return cls(path, path.stat().st_size // SLOT.size)

    def read(self, index: int) -> EngineStatus:
        pid, state, queued, restarts, heartbeat, forward_since = SLOT.unpack_from(self._map, index * SLOT.size)
        return EngineStatus(index, pid, EngineState(state), queued, restarts, heartbeat, forward_since)

    def all(self) -> list[EngineStatus]:
        return [self.read(i) for i in range(self.engines)]

    def write(self, index: int, *, pid: int | None = None, state: EngineState | None = None,
              queued_texts: int | None = None, restarts: int | None = None) -> None:
        now = self.read(index)
        SLOT.pack_into(self._map, index * SLOT.size, now.pid if pid is None else pid,
                       now.state if state is None else state,
                       now.queued_texts if queued_texts is None else queued_texts,
                       now.restarts if restarts is None else restarts, time.monotonic(), 0.0)

    def set_queued(self, index: int, queued_texts: int) -> None:
        """The engine's hot path: its queue depth only (one field, no read-modify-write)."""
        struct.pack_into("<q", self._map, index * SLOT.size + 16, queued_texts)

    def forward(self, index: int, started: float) -> None:
        """The engine, around each forward: when it started (0 when it ended)."""
        struct.pack_into("<d", self._map, index * SLOT.size + 40, started)

    def beat(self, index: int) -> None:
        """The engine's heartbeat thread: alive (a forward may hold the I/O thread, never this one for long)."""
        struct.pack_into("<d", self._map, index * SLOT.size + 32, time.monotonic())


def error_path(run_dir: Path, index: int) -> Path:
    return run_dir / f"engine-{index}.error"


def socket_address(run_dir: Path, index: int) -> str:
    return f"ipc://{run_dir / f'engine-{index}.sock'}"
