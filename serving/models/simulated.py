"""A simulated accelerator: the model folder's real text side, a forward that only waits.

For capacity planning (how many vCPUs does one GPU need, which front end keeps it busy?), as Triton's identity
backend is: `--backend sim` (SERVING_BACKEND=sim) serves a model folder whose forward waits
`fixed + per_token x padded tokens` without using host CPU and returns constant scores, while reading,
tokenising, batching, the host side of a batch (padding, the LSTM's embedding gather), encoding responses and
HTTP all run for real. Settings: SERVING_SIM_DEVICES (simulated accelerators, default 1: `serve` pins its
workers to them as it pins them to GPUs), SERVING_SIM_FIXED_MS (default 0.5) and SERVING_SIM_PER_TOKEN_US
(default 2).

A simulated device runs one forward at a time across every process pinned to it, as a GPU's compute is
shared: an exclusive lock on a file of the server's (each process opens its own, so the locks exclude each
other).
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.board import SIM_DEVICE_ENV
from serving.classifier import EncodedText, Scores
from serving.models.rnn_text import RNNText
from serving.models.roberta_text import RobertaText

PR_SET_TIMERSLACK = 29
_slack = threading.local()
SIM_SCORE = 0.01  # every label of every text: below any sensible threshold, so responses carry no labels
LOCKS_ENV = "SERVING_SIM_LOCKS"  # set by serve's master: the folder of its simulated devices' lock files
DEVICE_ENV = SIM_DEVICE_ENV  # set in each worker (or engine): the index of the simulated device it is pinned to


@dataclass(frozen=True)
class SimulatedAccelerator:
    """Which simulated device, and what a forward costs on it."""

    index: int = 0
    fixed_ms: float = 0.5
    per_token_us: float = 2.0

    def seconds(self, batch_size: int, padded_length: int) -> float:
        return self.fixed_ms / 1e3 + self.per_token_us / 1e6 * batch_size * padded_length

    @property
    def name(self) -> str:
        return f"sim:{self.index}"


def make_device_locks(count: int) -> Path:
    """The folder of `count` lock files, one per simulated device (serve's master, before forking); removed
    when the process that made it exits."""
    from serving.artifacts import remove_when_owner_exits

    folder = Path(tempfile.mkdtemp(prefix="toxserve-sim-"))
    atexit.register(remove_when_owner_exits, folder, os.getpid())
    for index in range(count):
        (folder / f"device-{index}.lock").touch(mode=0o600)
    return folder


def exact_sleeps() -> None:
    """Linux lets a thread's sleep end up to its timer slack (50 us by default) late; a device's forward ends when
    it is done, so the calling thread's slack goes to 1 ns (once per thread; nothing where prctl is missing)."""
    if getattr(_slack, "exact", False):
        return
    _slack.exact = True
    prctl = getattr(ctypes.CDLL(None), "prctl", None)
    if prctl is not None:
        prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


class SimulatedForward:
    """Mixed in before a family's text side: the forward waits on the simulated device instead of computing."""

    labels: tuple[str, ...]

    def __init__(self, model_dir: Path, accelerator: SimulatedAccelerator, max_length: int | None = None) -> None:
        super().__init__(model_dir, accelerator.name, max_length)  # type: ignore[call-arg]
        self.accelerator = accelerator
        locks = os.environ.get(LOCKS_ENV)
        if not locks:  # outside `serve` (a test, a script): a device of this process's own
            locks = str(make_device_locks(accelerator.index + 1))
        self._lock_fd = os.open(Path(locks) / f"device-{accelerator.index}.lock", os.O_RDWR | os.O_CREAT, 0o600)

    def prepare(self, batch: Sequence[EncodedText]) -> None:
        """The host's share of a real forward: build the batch's input arrays."""
        raise NotImplementedError

    def predict_encoded(self, batch: Sequence[EncodedText]) -> Scores:
        self.prepare(batch)
        wait = self.accelerator.seconds(len(batch), max(1, max(item.length for item in batch)))
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # the device is busy with another process's batch until then
        try:
            exact_sleeps()
            time.sleep(wait)  # a CUDA forward's host thread waits on the device; it does not compute
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        return np.full((len(batch), len(self.labels)), SIM_SCORE, dtype=np.float32)


class SimulatedRobertaClassifier(SimulatedForward, RobertaText):
    def prepare(self, batch: Sequence[EncodedText]) -> None:
        self.pad(batch)


class SimulatedRNNClassifier(SimulatedForward, RNNText):
    def prepare(self, batch: Sequence[EncodedText]) -> None:
        self.embed_numpy(batch)
