"""The models an engine holds, each behind its own batcher: one unnamed model, or a multi-model endpoint's many.

Loading and unloading run on threads of their own, never on the I/O thread, so the other models keep serving while
one loads or drains. Loads run one at a time, each checked first against what the device (or host) has free: a model
that will not fit is refused with 507 instead of running the engine out of memory mid-load. A multi-model engine
also compares what it holds with the catalog every second and lets go of any model the catalog no longer lists
(or lists as another load of the name): a load rolled back, or an unload, that could not reach this engine (it was
restarting, or still loading when its front end gave up) leaves nothing behind.
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
from serving.catalog import READY, Catalog, abandoned, estimate_footprint
from serving.config import Settings
from serving.engine.batching import Batcher
from serving.errors import InsufficientMemory, ModelExists, ModelNotFound, NotReady

log = logging.getLogger(__name__)

# An unloading model keeps taking requests until none has arrived for this long (requests a front end routed just
# before the catalog marked it unloading are still on their way, being tokenised), then its queue drains.
UNLOAD_GRACE_S = 0.5
HEADROOM = 0.9  # of what is free, the share a new model may take: allocators fragment, other processes allocate
RELOAD_BACKOFF_S = 30.0  # after a load on demand failed, how long its requests are told so before another try
RECONCILE_S = 1.0


class EngineModels:
    """name -> InferenceService; "" is the single-model server's one model. `load_service(settings, model_dir,
    name)` builds and warms one up (serving.engine.main.load_service)."""

    def __init__(self, settings: Settings, device: str, load_service: Callable, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.device = device
        self.on_gpu = device.startswith("cuda")
        self.catalog = catalog
        self._load_service = load_service
        self._services: dict[str, object] = {}
        self._generations: dict[str, str] = {}  # name -> the catalog generation it was loaded as
        self._arrived: dict[str, float] = {}  # name -> when its last request arrived
        self._failed: dict[str, tuple[str, float, str]] = {}  # name -> (generation, when, why) of a failed reload
        self._busy: set[str] = set()  # being loaded or unloaded
        self._lock = threading.Lock()
        self._one_load = threading.Lock()  # loads check free memory and then take it: one at a time
        self._stopping = False

    # the I/O thread's questions
    def batcher(self, name: str, generation: str = "") -> Batcher:
        """`name`'s batcher; with `generation`, only if it is that load of the name (texts tokenised for an earlier
        load of it are refused: the name may now be another model)."""
        service = self._services.get(name)
        if service is not None and (not generation or generation == self._generations.get(name)):
            self._arrived[name] = time.monotonic()
            return service.batcher  # type: ignore[attr-defined]
        if service is not None:
            raise ModelNotFound(f"model {name!r} was unloaded and loaded again since this request was routed; retry")
        raise self._missing(name)

    def _missing(self, name: str) -> Exception:
        """A model the catalog lists as ready that this engine lacks (it restarted while the model was being loaded
        elsewhere) is loaded now; its requests meanwhile get 503, and 503 with the reason for a while after such a
        load failed."""
        entry = self.catalog.get(name) if self.catalog is not None and name else None
        if entry is None or entry.state != READY:
            return ModelNotFound(f"model {name!r} is not loaded")
        failed = self._failed.get(name)
        if failed is not None and failed[0] == entry.generation and time.monotonic() - failed[1] < RELOAD_BACKOFF_S:
            return NotReady(f"model {name!r} could not be loaded on this engine ({failed[2]}); it is tried again "
                            f"within {RELOAD_BACKOFF_S:.0f} s")
        with self._lock:
            start = name not in self._busy and name not in self._services
            if start:
                self._busy.add(name)
        if start:
            threading.Thread(target=self._load_on_demand, args=(name, Path(entry.path), entry.generation),
                             name=f"load-{name}", daemon=True).start()
        return NotReady(f"model {name!r} is being loaded on this engine; retry")

    @property
    def queued_texts(self) -> int:
        return sum(s.batcher.queued_texts for s in list(self._services.values()))  # type: ignore[attr-defined]

    @property
    def names(self) -> list[str]:
        return list(self._services)

    # loading and unloading (on threads of their own)
    def add(self, name: str, service, generation: str = "") -> None:
        self._services[name] = service
        self._generations[name] = generation

    def load(self, name: str, model_dir: Path, generation: str = "") -> dict:
        """Load and warm up `name` from `model_dir`; ModelExists if it is here, InsufficientMemory if it will not
        fit. Returns what /models/NAME shows of it."""
        if name in self._services and generation and self._generations.get(name) != generation:
            self._drop(name)  # an earlier load of the name the catalog no longer lists, not yet let go
        with self._lock:
            if name in self._busy:  # an earlier load of it, still loading or being let go
                raise NotReady(f"an earlier load of model {name!r} is still being loaded or let go here; retry")
            if name in self._services:
                raise ModelExists(f"model {name!r} is already loaded on this engine")
            self._busy.add(name)
        try:
            return self._load(name, model_dir, generation)
        finally:
            with self._lock:
                self._busy.discard(name)

    def _load_on_demand(self, name: str, model_dir: Path, generation: str) -> None:
        """See _missing; a model unloaded from the catalog meanwhile is let go again at once."""
        try:
            self._load(name, model_dir, generation)
            self._failed.pop(name, None)
        except Exception as exc:
            log.exception("could not load model %s on demand", name)
            self._failed[name] = (generation, time.monotonic(), f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._busy.discard(name)
        if not self._listed(name):
            self._drop(name)

    def _listed(self, name: str, generation: str | None = None) -> bool:
        """Whether the catalog lists this load of `name` (the one held, or `generation`), and not as a load whose
        front end died before finishing it."""
        if self.catalog is None:
            return True
        entry = self.catalog.get(name)
        wanted = self._generations.get(name) if generation is None else generation
        return entry is not None and entry.generation == wanted and not abandoned(entry)

    def _load(self, name: str, model_dir: Path, generation: str) -> dict:
        s = self.settings
        family = detect_family(model_dir)
        footprint = estimate_footprint(model_dir, family, s.max_batch_tokens, s.max_batch_size, self.on_gpu)
        with self._one_load:
            if self._stopping:
                raise NotReady("the engine is shutting down")
            if generation and not self._listed(name, generation):  # rolled back while it waited for its turn
                raise ModelNotFound(f"the load of model {name!r} was withdrawn")
            self._check_room(name, footprint)
            started = time.monotonic()
            before = used_memory(self.on_gpu)
            try:
                service = self._load_service(s, model_dir, name)
            except Exception as exc:
                from serving.engine.device import is_out_of_memory

                if not (isinstance(exc, MemoryError) or is_out_of_memory(exc)):
                    raise
                release_memory(self.on_gpu)
                raise InsufficientMemory(f"model {name!r} ran out of memory while loading ({exc})") from exc
            after = used_memory(self.on_gpu)
        seconds = time.monotonic() - started
        measured = {key: max(0, after[key] - before[key]) for key in after}
        self.add(name, service, generation)
        if self._stopping:  # SIGTERM came during the load: stop_all did not see this one
            service.stop(1.0)
        metrics.model_load_seconds_by_model.labels(name).set(seconds)
        metrics.model_memory_bytes.labels(name).set(sum(measured.values()))
        classifier = service.classifier
        log.info("model %s loaded from %s in %.1f s (%s)", name, model_dir, seconds, measured)
        return {"family": family, "device": classifier.device, "backend": type(classifier).__name__,
                "labels": list(classifier.labels), "load_seconds": round(seconds, 3), "footprint": footprint,
                "measured": measured}

    def _check_room(self, name: str, footprint: dict) -> None:
        free = free_memory(self.on_gpu)
        for kind in ("device_bytes", "host_bytes"):
            place = "device" if kind == "device_bytes" and self.on_gpu else "host"
            room = free.get(place)
            if room is not None and footprint[kind] > HEADROOM * room:
                raise InsufficientMemory(
                    f"model {name!r} needs about {footprint[kind] / 2**20:.0f} MiB of {place} memory "
                    f"(weights and the largest batch's activations); {room / 2**20:.0f} MiB are free")

    def unload(self, name: str, drain_s: float, generation: str = "") -> dict:
        """Take `name` out once no request for it has arrived for UNLOAD_GRACE_S (the catalog stopped new ones),
        let its queued requests finish, and free its memory. A `generation` other than the one held is not this
        load of the name: ModelNotFound."""
        with self._lock:
            other_load = bool(generation) and generation != self._generations.get(name)
            if name not in self._services or name in self._busy or other_load:
                raise ModelNotFound(f"model {name!r} is not loaded on this engine")
            self._busy.add(name)
        try:
            started = time.monotonic()
            deadline = started + drain_s
            while time.monotonic() < deadline:
                quiet = time.monotonic() - max(self._arrived.get(name, 0.0), started)
                if quiet >= UNLOAD_GRACE_S:
                    break
                time.sleep(UNLOAD_GRACE_S - quiet)
            before = used_memory(self.on_gpu)
            finished = self._take_out(name, max(0.1, deadline - time.monotonic()))
            after = used_memory(self.on_gpu)
            freed = {key: max(0, before[key] - after[key]) for key in after}
            log.info("model %s unloaded (%s)%s", name, freed, "" if finished else "; its queue did not drain in time")
            return {"freed": freed, "drained": finished}
        finally:
            with self._lock:
                self._busy.discard(name)

    def _take_out(self, name: str, drain_s: float) -> bool:
        """Finish `name`'s queued requests (within `drain_s`), forget it and free its memory (this is the last
        reference to its service that the engine holds); whether it drained."""
        service = self._services[name]
        finished = service.stop(drain_s)  # type: ignore[attr-defined]
        self._services.pop(name, None)
        self._generations.pop(name, None)
        self._arrived.pop(name, None)
        metrics.model_memory_bytes.labels(name).set(0)
        del service
        release_memory(self.on_gpu)
        return finished

    def _drop(self, name: str) -> None:
        """Let go of a model nobody routes to any more (not in the catalog): no grace, a short drain."""
        if self._listed(name):  # read outside the lock: the I/O thread takes it too
            return
        with self._lock:
            if name not in self._services or name in self._busy or self._generations.get(name) is None:
                return
            self._busy.add(name)
        try:
            self._take_out(name, 1.0)
            log.info("model %s is not in the catalog (a load rolled back, an unload this engine missed); let go",
                     name)
        finally:
            with self._lock:
                self._busy.discard(name)

    def reconcile(self) -> None:
        """Let go of every model the catalog does not list as this load of its name (see the module's note)."""
        for name in [n for n in list(self._services) if n not in self._busy and not self._listed(n)]:
            self._drop(name)

    def reconcile_forever(self) -> None:
        while True:
            time.sleep(RECONCILE_S)
            try:
                self.reconcile()
            except Exception:
                log.exception("comparing the models with the catalog failed")

    def refuse_loads(self) -> None:
        """SIGTERM: no load starts any more (one running ends, and is stopped at once)."""
        self._stopping = True

    def stop_all(self, drain_s: float) -> None:
        self.refuse_loads()
        deadline = time.monotonic() + drain_s
        stoppers = [threading.Thread(target=s.stop, args=(max(0.1, deadline - time.monotonic()),),  # type: ignore[attr-defined]
                                     daemon=True) for s in list(self._services.values())]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(max(0.1, deadline - time.monotonic()))


def release_memory(on_gpu: bool) -> None:
    gc.collect()
    if on_gpu:
        import torch

        torch.cuda.empty_cache()


def free_memory(on_gpu: bool) -> dict[str, int]:
    """Bytes free on the host and on this engine's GPU: what the driver reports free (other processes' use
    counted as taken) plus what torch's allocator holds cached but unused (it hands that out first)."""
    free = {"host": _host_available()}
    if on_gpu:
        import torch

        cached = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        free["device"] = int(torch.cuda.mem_get_info()[0] + max(0, cached))
    return free


def used_memory(on_gpu: bool) -> dict[str, int]:
    """This process's resident memory and, on a GPU, the device memory in use as the driver counts it (torch's
    allocator and ONNX Runtime's alike): a load's cost, measured."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])  # resident (Linux /proc: the container's OS)
    used = {"host_bytes": pages * os.sysconf("SC_PAGE_SIZE")}
    if on_gpu:
        import torch

        free, total = torch.cuda.mem_get_info()
        used["device_bytes"] = int(total - free)
    return used


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
