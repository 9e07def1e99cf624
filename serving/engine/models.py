"""The models an engine holds, each behind its own batcher: one unnamed model, or a multi-model endpoint's many.

Loading and unloading run on threads of their own, never on the I/O thread, so the other models keep serving while
one loads or drains. Before a load the model's estimated footprint is checked against what the device (or host) has
free: a model that will not fit is refused with 507 instead of running the engine out of memory mid-load.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serving import metrics
from serving.artifacts import detect_family
from serving.catalog import READY, Catalog, estimate_footprint
from serving.config import Settings
from serving.engine.batching import Batcher
from serving.errors import InsufficientMemory, ModelExists, ModelNotFound, NotReady

log = logging.getLogger(__name__)

# After a model is marked unloading in the catalog, how long it still takes requests: those a front end routed just
# before the mark are still on their way (being tokenised), and are answered rather than refused.
UNLOAD_GRACE_S = 0.5
HEADROOM = 0.9  # of what is free, the share a new model may take: allocators fragment, other processes allocate


class EngineModels:
    """name -> InferenceService; "" is the single-model server's one model. `load_service(settings, model_dir,
    name)` builds and warms one up (serving.engine.main.load_service)."""

    def __init__(self, settings: Settings, device: str, load_service: Callable, catalog: Catalog | None = None,
                 on_batch: Callable[[str, object], None] | None = None) -> None:
        self.settings = settings
        self.device = device
        self.catalog = catalog
        self._load_service = load_service
        self._services: dict[str, object] = {}
        self._busy: set[str] = set()  # being loaded or unloaded
        self._lock = threading.Lock()
        self.on_batch = on_batch

    # the I/O thread's questions
    def batcher(self, name: str) -> Batcher:
        service = self._services.get(name)
        if service is not None:
            return service.batcher  # type: ignore[attr-defined]
        raise self._missing(name)

    def _missing(self, name: str) -> Exception:
        """A model the catalog lists as ready that this engine lacks (it restarted while the model was being loaded
        elsewhere) is loaded now; its requests meanwhile get 503."""
        entry = self.catalog.get(name) if self.catalog is not None and name else None
        if entry is None or entry.state != READY:
            return ModelNotFound(f"model {name!r} is not loaded")
        with self._lock:
            start = name not in self._busy and name not in self._services
            if start:
                self._busy.add(name)
        if start:
            threading.Thread(target=self._load_quietly, args=(name, Path(entry.path)), name=f"load-{name}",
                             daemon=True).start()
        return NotReady(f"model {name!r} is being loaded on this engine; retry")

    @property
    def queued_texts(self) -> int:
        return sum(s.batcher.queued_texts for s in list(self._services.values()))  # type: ignore[attr-defined]

    @property
    def names(self) -> list[str]:
        return list(self._services)

    # loading and unloading (on threads of their own)
    def add(self, name: str, service) -> None:
        self._services[name] = service

    def load(self, name: str, model_dir: Path) -> dict:
        """Load and warm up `name` from `model_dir`; ModelExists if it is here, InsufficientMemory if it will not
        fit. Returns what /models/NAME shows of it."""
        with self._lock:
            if name in self._services or name in self._busy:
                raise ModelExists(f"model {name!r} is already loaded (or loading) on this engine")
            self._busy.add(name)
        try:
            return self._load(name, model_dir)
        finally:
            with self._lock:
                self._busy.discard(name)

    def _load_quietly(self, name: str, model_dir: Path) -> None:
        """A load on demand (see _missing); a model unloaded from the catalog meanwhile is let go again."""
        try:
            self._load(name, model_dir)
            entry = self.catalog.get(name) if self.catalog is not None else None
            if entry is None or entry.state != READY:
                self._drop(name)
        except Exception:
            log.exception("could not reload model %s", name)
        finally:
            with self._lock:
                self._busy.discard(name)

    def _drop(self, name: str) -> None:
        service = self._services.pop(name, None)
        if service is not None:
            service.stop(0.1)  # type: ignore[attr-defined]
            log.info("model %s was unloaded while this engine loaded it; let go", name)

    def _load(self, name: str, model_dir: Path) -> dict:
        s = self.settings
        family = detect_family(model_dir)
        on_gpu = self.device.startswith("cuda")
        footprint = estimate_footprint(model_dir, family, s.max_batch_tokens, s.max_batch_size, on_gpu)
        self._check_room(name, footprint, on_gpu)
        started = time.monotonic()
        before = used_memory(on_gpu)
        service = self._load_service(s, model_dir, name)
        after = used_memory(on_gpu)
        seconds = time.monotonic() - started
        measured = {key: max(0, after[key] - before[key]) for key in after}
        self._services[name] = service
        metrics.model_load_seconds_by_model.labels(name).set(seconds)
        metrics.model_memory_bytes.labels(name).set(sum(measured.values()))
        classifier = service.classifier
        log.info("model %s loaded from %s in %.1f s (%s)", name, model_dir, seconds, measured)
        return {"family": family, "device": classifier.device, "backend": type(classifier).__name__,
                "labels": list(classifier.labels), "load_seconds": round(seconds, 3), "footprint": footprint,
                "measured": measured}

    def _check_room(self, name: str, footprint: dict, on_gpu: bool) -> None:
        free = free_memory(on_gpu)
        for kind in ("device_bytes", "host_bytes"):
            place = "device" if kind == "device_bytes" and on_gpu else "host"
            room = free.get(place)
            if room is not None and footprint[kind] > HEADROOM * room:
                raise InsufficientMemory(
                    f"model {name!r} needs about {footprint[kind] / 2**20:.0f} MiB of {place} memory "
                    f"(weights and the largest batch's activations); {room / 2**20:.0f} MiB are free")

    def unload(self, name: str, drain_s: float) -> dict:
        """Take `name` out (its new requests get 404), let its queued requests finish, and free its memory."""
        with self._lock:
            service = self._services.get(name)
            if service is None or name in self._busy:
                raise ModelNotFound(f"model {name!r} is not loaded on this engine")
            self._busy.add(name)
        try:
            on_gpu = self.device.startswith("cuda")
            time.sleep(UNLOAD_GRACE_S)
            before = used_memory(on_gpu)
            finished = service.stop(drain_s)  # type: ignore[attr-defined]
            del self._services[name]
            del service
            gc.collect()
            if on_gpu:
                import torch

                torch.cuda.empty_cache()
            after = used_memory(on_gpu)
            metrics.model_memory_bytes.labels(name).set(0)
            freed = {key: max(0, before[key] - after[key]) for key in after}
            log.info("model %s unloaded (%s)%s", name, freed, "" if finished else "; its queue did not drain in time")
            return {"freed": freed, "drained": finished}
        finally:
            with self._lock:
                self._busy.discard(name)

    def stop_all(self, drain_s: float) -> None:
        deadline = time.monotonic() + drain_s
        services = list(self._services.values())
        stoppers = [threading.Thread(target=s.stop, args=(max(0.1, deadline - time.monotonic()),), daemon=True)  # type: ignore[attr-defined]
                    for s in services]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(max(0.1, deadline - time.monotonic()))


def free_memory(on_gpu: bool) -> dict[str, int]:
    """Bytes free on this engine's GPU (as the driver counts it: other processes' use included) and on the host."""
    free = {"host": _host_available()}
    if on_gpu:
        import torch

        free["device"] = int(torch.cuda.mem_get_info()[0])
    return free


def used_memory(on_gpu: bool) -> dict[str, int]:
    """This process's resident memory and, on a GPU, what torch's allocator holds: a load's cost, measured."""
    used = {"host_bytes": resident_bytes()}
    if on_gpu:
        import torch

        used["device_bytes"] = int(torch.cuda.memory_reserved())
    return used


def resident_bytes(pid: int | str = "self") -> int:
    """A process's resident set (Linux /proc; the container's OS)."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _host_available() -> int:
    """MemAvailable, and the cgroup's limit less its usage when a container limit is lower."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        usage = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            available = min(available, int(limit) - usage)
    except (OSError, ValueError):
        pass
    return available
