"""Which GPUs this host gives the server, found without initialising CUDA in the process that forks workers.

The gunicorn master forks its workers; a master that has initialised CUDA (as `torch.cuda.is_available()` does
unless NVML answers) leaves every forked worker unable to use it ("Cannot re-initialize CUDA in forked
subprocess"). So the master asks a spawned child, which may initialise CUDA freely and then exits.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
BF16_MIN_CAPABILITY = (8, 0)  # Ampere: T4 (7.5, ml.g4dn) and V100 (7.0, ml.p3) have no bf16 tensor cores
PROBE_TIMEOUT_S = 120
PROBE_MARK = "TOXSERVE_GPU_PROBE"  # starts the report's line, whatever else the child prints
PROBE = f"MARK = {PROBE_MARK!r}\n" + """
import json, torch
devices = []
built = torch.backends.cuda.is_built()
if built and torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append({"name": p.name, "capability": [p.major, p.minor], "memory_bytes": p.total_memory})
print("\\n" + MARK, json.dumps({"devices": devices, "built": built, "torch": torch.__version__,
                               "cuda": torch.version.cuda}), flush=True)
import os
os._exit(0)  # a driver's teardown at exit cannot turn a report already given into a failure
"""


@dataclass(frozen=True)
class Gpu:
    """One GPU as a worker will see it: `visible_id` is its CUDA_VISIBLE_DEVICES entry (an index or a UUID)."""

    visible_id: str
    name: str
    capability: tuple[int, int]
    memory_bytes: int

    @property
    def supports_bf16(self) -> bool:
        return self.capability >= BF16_MIN_CAPABILITY

    def describe(self) -> str:
        major, minor = self.capability
        return f"{self.name} (CUDA_VISIBLE_DEVICES={self.visible_id}, compute {major}.{minor}, " \
               f"{self.memory_bytes / 2**30:.0f} GiB)"


def visible_ids(count: int, env: dict | os._Environ = os.environ) -> list[str]:
    """The host's CUDA_VISIBLE_DEVICES entries (indices or GPU UUIDs) for the `count` devices CUDA sees."""
    raw = env.get(VISIBLE_ENV)
    if raw is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in raw.split(",") if entry.strip()][:count]


def probe(env: dict | None = None) -> dict:
    """The visible devices as a spawned child reports them ({"devices": [] ...} without CUDA), with its torch
    and CUDA build versions and the tail of what it wrote to stderr (where torch says why it sees no GPU); never
    touches CUDA, nor imports torch, here. Any failure is a RuntimeError."""
    try:  # -P: a folder named torch or json in the working directory must not stand in for the real one
        done = subprocess.run([sys.executable, "-P", "-c", PROBE], capture_output=True, encoding="utf-8",
                              errors="replace", timeout=PROBE_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"the GPU probe did not answer within {PROBE_TIMEOUT_S} s") from exc
    except OSError as exc:
        raise RuntimeError(f"the GPU probe could not start: {exc}") from exc
    stderr = done.stderr.strip()[-500:]
    if done.returncode != 0:
        raise RuntimeError(f"the GPU probe failed (exit status {done.returncode}): {stderr}")
    answers = [line[len(PROBE_MARK) + 1 :] for line in done.stdout.splitlines() if line.startswith(PROBE_MARK + " ")]
    try:
        found = json.loads(answers[-1])
        devices = []
        for d in found["devices"]:
            capability = [int(c) for c in d["capability"]]
            if len(capability) != 2:
                raise ValueError("a capability is not (major, minor)")
            devices.append({"name": str(d["name"]), "capability": capability, "memory_bytes": int(d["memory_bytes"])})
        return {"devices": devices, "built": bool(found["built"]), "torch": str(found["torch"]), "cuda": found["cuda"],
                "stderr": stderr}
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"the GPU probe answered something other than its report: "
                           f"{done.stdout.strip()[-500:]!r}") from exc


def discover(device: str) -> list[Gpu]:
    """The GPUs to serve on for `device` (auto, cpu, cuda or cuda:N); [] means CPU.

    auto: every visible GPU, none when there is none. cuda: every visible GPU, an error when there is none.
    cuda:N: that one (N counts within CUDA_VISIBLE_DEVICES, as CUDA does)."""
    if device == "cpu":
        return []
    # `import torch` stays out of this process: in the engines layout it forks the front ends, which would all
    # map torch (the workers layout imports it here afterwards, for its workers to share).
    found = probe()
    devices = found["devices"]
    gpus = [Gpu(visible_id, d["name"], tuple(d["capability"]), int(d["memory_bytes"]))  # type: ignore[arg-type]
            for visible_id, d in zip(visible_ids(len(devices)), devices, strict=False)]
    if not gpus and found["built"] and found["stderr"]:
        # A CUDA build that sees no GPU says why on stderr (a driver too old, no device node): keep it visible.
        log.warning("torch %s (CUDA build %s) sees no GPU; it said: %s", found["torch"], found["cuda"],
                    found["stderr"])
    if device == "auto":
        return gpus
    if not gpus:
        if not found["built"]:
            raise ValueError(f"device {device!r} asked for, but torch {found['torch']} is a build without CUDA "
                             "(install a CUDA build of torch)")
        raise ValueError(f"device {device!r} asked for, but no CUDA GPU is visible "
                         f"({VISIBLE_ENV}={os.environ.get(VISIBLE_ENV, 'unset')}, torch {found['torch']}, "
                         f"CUDA build {found['cuda']}: a driver older than that build needs also shows as none)")
    if device == "cuda":
        return gpus
    index = _device_index(device)
    if index >= len(gpus):
        raise ValueError(f"device {device!r} asked for, but only {len(gpus)} GPU(s) are visible")
    return [gpus[index]]


def _device_index(device: str) -> int:
    prefix, _, index = device.partition(":")
    if prefix != "cuda" or not index.isdigit():
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return int(index)


def check_dtype(dtype: str, gpus: list[Gpu]) -> None:
    """bf16 only where the GPU computes it natively; a clear start-up error naming the GPU otherwise."""
    if dtype != "bf16":
        return
    for gpu in gpus:
        if not gpu.supports_bf16:
            raise ValueError(f"torch_dtype bf16 needs compute capability 8.0 or newer; {gpu.describe()} has not "
                             "(use fp16 or auto)")


def next_slot(slots_in_use: list[int], gpu_count: int) -> int:
    """The GPU (index into discover()'s list) for a new worker: the one the fewest live workers hold."""
    return min(range(gpu_count), key=lambda slot: (slots_in_use.count(slot), slot))
