"""An engine's models (serving.engine.models): loaded and unloaded beside each other on simulated devices, memory
checked before a load, queued requests finished before an unload, and a model the catalog lists reloaded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from serving.catalog import READY, Catalog, Entry
from serving.config import Settings
from serving.engine import models as engine_models
from serving.engine.main import load_service
from serving.engine.models import EngineModels
from serving.errors import InsufficientMemory, ModelExists, ModelNotFound, NotReady

TEXT = "thanks for the thoughtful reply"


def engine_models_on_sim(tmp_path: Path, fixed_ms: float = 1.0, catalog: Catalog | None = None) -> EngineModels:
    settings = Settings(backend="sim", sim_fixed_ms=fixed_ms, multi_model=True, models_root=str(tmp_path))
    return EngineModels(settings, "cpu", lambda s, folder, name: load_service(s, 0, "cpu", 1, folder, name), catalog)


def encoded(models: EngineModels, name: str, count: int = 1):
    return models._services[name].classifier.encode([TEXT] * count)  # type: ignore[attr-defined]


def test_models_load_beside_each_other_and_unload(demo_dir, tmp_path):
    models = engine_models_on_sim(tmp_path)
    detail = models.load("rob", demo_dir / "roberta")
    assert detail["family"] == "roberta" and len(detail["labels"]) == 7 and detail["load_seconds"] > 0
    assert detail["footprint"]["host_bytes"] > 0 and "host_bytes" in detail["measured"]
    models.load("lstm", demo_dir / "rnn")
    with pytest.raises(ModelExists):
        models.load("rob", demo_dir / "roberta")
    assert sorted(models.names) == ["lstm", "rob"]
    for name in ("rob", "lstm"):
        assert models.batcher(name).submit(encoded(models, name), 10).result(10).scores.shape == (1, 7)
    with pytest.raises(ModelNotFound):
        models.batcher("other")
    assert models.unload("rob", drain_s=10)["drained"] is True
    with pytest.raises(ModelNotFound):
        models.batcher("rob")
    with pytest.raises(ModelNotFound):
        models.unload("rob", drain_s=10)
    assert models.names == ["lstm"]
    models.stop_all(5)


def test_an_unload_finishes_the_requests_queued_for_the_model(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_models, "UNLOAD_GRACE_S", 0.0)  # the drain alone, without the grace before it
    models = engine_models_on_sim(tmp_path, fixed_ms=100)
    models.load("rob", demo_dir / "roberta")
    batcher = models.batcher("rob")
    batcher.max_batch_size = 1  # one text per forward: the others wait in the queue
    pending = [batcher.submit(encoded(models, "rob"), 30, inline=False) for _ in range(5)]
    time.sleep(0.05)
    assert batcher.queued_texts >= 3
    started = time.monotonic()
    assert models.unload("rob", drain_s=10)["drained"] is True
    assert time.monotonic() - started >= 0.3  # it waited for them
    assert [p.result(0).scores.shape for p in pending] == [(1, 7)] * 5
    models.stop_all(5)


def test_a_model_that_will_not_fit_is_refused_before_loading(demo_dir, tmp_path, monkeypatch):
    models = engine_models_on_sim(tmp_path)
    monkeypatch.setattr(engine_models, "free_memory", lambda on_gpu: {"host": 1024})
    with pytest.raises(InsufficientMemory, match="MiB of host memory"):
        models.load("rob", demo_dir / "roberta")
    assert models.names == []
    monkeypatch.setattr(engine_models, "free_memory", lambda on_gpu: {"host": 2**40, "device": 1024})
    gpu = EngineModels(models.settings, "cuda", models._load_service)
    with pytest.raises(InsufficientMemory, match="device memory"):
        gpu._check_room("rob", {"device_bytes": 10_000, "host_bytes": 0})
    models.load("rob", demo_dir / "roberta")  # the name was not left taken by the refusal
    models.stop_all(5)


def test_a_model_the_catalog_lists_but_this_engine_lacks_is_loaded_on_its_first_request(demo_dir, tmp_path):
    """An engine restarted while a model was being loaded elsewhere: its requests get 503 until it has it."""
    catalog = Catalog(tmp_path)
    with catalog.editing() as entries:
        entries["lstm"] = Entry("lstm", str(demo_dir / "rnn"), "rnn", READY)
    models = engine_models_on_sim(tmp_path, catalog=catalog)
    with pytest.raises(NotReady, match="being loaded"):
        models.batcher("lstm")
    deadline = time.monotonic() + 30
    while "lstm" not in models.names and time.monotonic() < deadline:
        time.sleep(0.05)
    assert models.batcher("lstm") is not None
    with pytest.raises(ModelNotFound):  # not in the catalog: never loaded on demand
        models.batcher("other")
    models.stop_all(5)


def test_a_model_unloaded_while_this_engine_loaded_it_on_demand_is_let_go(demo_dir, tmp_path):
    import threading

    catalog = Catalog(tmp_path)
    with catalog.editing() as entries:
        entries["lstm"] = Entry("lstm", str(demo_dir / "rnn"), "rnn", READY)
    release = threading.Event()
    settings = Settings(backend="sim", multi_model=True, models_root=str(tmp_path))

    def slow_load(s, folder, name):
        release.wait(10)
        return load_service(s, 0, "cpu", 1, folder, name)

    models = EngineModels(settings, "cpu", slow_load, catalog)
    with pytest.raises(NotReady):
        models.batcher("lstm")
    with catalog.editing() as entries:  # unloaded elsewhere while this engine was still loading it
        del entries["lstm"]
    release.set()
    deadline = time.monotonic() + 30
    while (models.names or models._busy) and time.monotonic() < deadline:  # busy from the request on
        time.sleep(0.05)
    assert models.names == []


def test_an_engine_lets_go_of_models_the_catalog_does_not_list_as_that_load(demo_dir, tmp_path):
    """A load rolled back, or an unload this engine never received: the catalog decides what stays."""
    catalog = Catalog(tmp_path)
    with catalog.editing() as entries:
        for name, generation in (("kept", "g1"), ("renewed", "g2"), ("orphan", "g4")):
            entries[name] = Entry(name, str(demo_dir / "rnn"), "rnn", READY, generation=generation)
    models = engine_models_on_sim(tmp_path, catalog=catalog)
    for name, generation in (("kept", "g1"), ("renewed", "g2"), ("orphan", "g4")):
        models.load(name, demo_dir / "rnn", generation)
    with catalog.editing() as entries:
        entries["renewed"].generation = "g3"  # unloaded and loaded again elsewhere while this engine was away
        del entries["orphan"]  # a load rolled back, or an unload this engine missed
    models.reconcile()
    assert models.names == ["kept"]
    with pytest.raises(ModelNotFound):
        models.unload("kept", drain_s=5, generation="g0")  # an unload of another load of the name
    assert models.names == ["kept"]
    models.stop_all(5)


def test_a_load_on_demand_that_failed_is_not_retried_at_once(demo_dir, tmp_path):
    catalog = Catalog(tmp_path)
    with catalog.editing() as entries:
        entries["broken"] = Entry("broken", str(tmp_path / "nowhere"), "rnn", READY, generation="g")
    models = engine_models_on_sim(tmp_path, catalog=catalog)
    with pytest.raises(NotReady, match="being loaded"):
        models.batcher("broken")
    deadline = time.monotonic() + 10
    while ("broken" not in models._failed or models._busy) and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(NotReady, match="could not be loaded"):
        models.batcher("broken")
    assert not models._busy  # no second load started


def test_warm_up_forwards_run_through_the_hook_given_before_the_warm_up(demo_dir):
    """The engine stamps forwards on the board through that hook: a warm-up stuck in a device call is seen too."""
    forwards: list[int] = []

    def watch(service) -> None:
        run_batch = service.batcher.run_batch
        service.batcher.run_batch = lambda batch: (forwards.append(len(batch)), run_batch(batch))[1]

    settings = Settings(backend="sim", model_dir=str(demo_dir / "roberta"))
    service = load_service(settings, 0, "cpu", 1, before_warmup=watch)
    assert forwards, "the warm-up ran no forward through the hook"
    service.stop(5)


def test_the_board_shows_the_oldest_forward_still_running():
    from serving.engine.main import Forwards

    stamps: list[float] = []

    class Board:
        def forward(self, index: int, started: float) -> None:
            stamps.append(started)

    class Batcher:
        def __init__(self) -> None:
            self.run_batch = lambda batch: batch()

    class Service:
        def __init__(self) -> None:
            self.batcher = Batcher()

    forwards = Forwards(Board(), 0)  # type: ignore[arg-type]
    stuck, quick = Service(), Service()
    forwards.watch(stuck)
    forwards.watch(quick)
    seen: list[float] = []
    # the stuck model's forward is running while the quick one's starts and ends
    stuck.batcher.run_batch(lambda: quick.batcher.run_batch(lambda: seen.append(stamps[-1])))
    first = stamps[0]
    assert stamps[1] == first and stamps[2] == first  # the quick forward neither hid nor replaced the stuck one
    assert stamps[-1] == 0.0


def test_an_unload_takes_requests_until_none_has_arrived_for_the_grace(demo_dir, tmp_path):
    """A request routed just before the catalog marked the model unloading reaches the engine after the unload began:
    it is answered, even when the model had been idle for long before."""
    import threading

    models = engine_models_on_sim(tmp_path)
    models.load("rob", demo_dir / "roberta")
    models._arrived["rob"] = time.monotonic() - 60  # idle for a minute
    text = encoded(models, "rob")
    engine_models.UNLOAD_GRACE_S, grace = 3.0, engine_models.UNLOAD_GRACE_S  # room for a slow, shared machine
    try:
        unloading = threading.Thread(target=models.unload, args=("rob", 10))
        unloading.start()
        while "rob" not in models._busy:
            time.sleep(0.01)
        late = models.batcher("rob").submit(text, 10)  # raises if the model was already taken out
    finally:
        engine_models.UNLOAD_GRACE_S = grace
    assert late.result(10).scores.shape == (1, 7)
    unloading.join(15)
    assert models.names == []


def test_loads_run_one_at_a_time_and_out_of_memory_is_507(demo_dir, tmp_path):
    import threading

    running, most = [0], [0]
    lock = threading.Lock()
    settings = Settings(backend="sim", multi_model=True, models_root=str(tmp_path))

    def counting(s, folder, name):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            if name == "huge":
                raise MemoryError("cannot allocate")
            time.sleep(0.2)
            return load_service(s, 0, "cpu", 1, folder, name)
        finally:
            with lock:
                running[0] -= 1

    models = EngineModels(settings, "cpu", counting)
    loads = [threading.Thread(target=models.load, args=(name, demo_dir / "rnn")) for name in ("a", "b", "c")]
    for t in loads:
        t.start()
    for t in loads:
        t.join(30)
    assert sorted(models.names) == ["a", "b", "c"] and most[0] == 1
    with pytest.raises(InsufficientMemory, match="ran out of memory"):
        models.load("huge", demo_dir / "rnn")
    assert "huge" not in models.names and not models._busy
    models.stop_all(5)
    with pytest.raises(NotReady, match="shutting down"):  # SIGTERM: no load starts any more
        models.load("late", demo_dir / "rnn")


def test_a_new_load_of_a_name_replaces_an_earlier_one_the_catalog_dropped(demo_dir, tmp_path):
    """A front end died mid-load (its load stayed on the engine); another loads the name again: not 409."""
    catalog = Catalog(tmp_path)
    with catalog.editing() as entries:
        entries["m"] = Entry("m", str(demo_dir / "rnn"), "rnn", READY, generation="g1")
    models = engine_models_on_sim(tmp_path, catalog=catalog)
    models.load("m", demo_dir / "rnn", "g1")
    with catalog.editing() as entries:
        entries["m"] = Entry("m", str(demo_dir / "roberta"), "roberta", READY, generation="g2")
    assert models.load("m", demo_dir / "roberta", "g2")["family"] == "roberta"
    assert models._generations["m"] == "g2"
    with pytest.raises(ModelNotFound, match="loaded again"):  # texts tokenised for the earlier load are refused
        models.batcher("m", "g1")
    assert models.batcher("m", "g2") is not None
    with pytest.raises(ModelExists):  # the same load twice is still refused
        models.load("m", demo_dir / "roberta", "g2")
    models.stop_all(5)


def test_a_load_withdrawn_while_it_waited_for_its_turn_does_not_run(demo_dir, tmp_path):
    catalog = Catalog(tmp_path)
    models = engine_models_on_sim(tmp_path, catalog=catalog)
    with pytest.raises(ModelNotFound, match="withdrawn"):  # its front end rolled it back: not in the catalog
        models.load("gone", demo_dir / "rnn", "g1")
    assert models.names == []


def test_gpu_memory_paths_with_a_fake_device(demo_dir, tmp_path, monkeypatch):
    """The GPU's bookkeeping, on a CPU: torch.cuda's memory calls answer for a fake 1 GiB device whose use grows by
    what each load allocates. Free memory counts torch's cached blocks, a load's device cost and an unload's
    release are the driver's figures, an unload empties the cache, and a CUDA out-of-memory error is a 507."""
    import torch

    gib = 2**30
    device = {"used": 200 * 2**20, "cached": 0, "emptied": 0}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (gib - device["used"], gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: device["cached"] + 64 * 2**20)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 64 * 2**20)

    def empty_cache() -> None:
        device["used"] -= device["cached"]
        device["cached"], device["emptied"] = 0, device["emptied"] + 1

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    settings = Settings(backend="sim", multi_model=True, models_root=str(tmp_path))

    def on_the_device(s, folder, name):
        if name == "too-big":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        service = load_service(s, 0, "cpu", 1, folder, name)
        device["used"] += 100 * 2**20  # the weights and warm-up buffers
        return service

    models = EngineModels(settings, "cuda", on_the_device)
    loaded = models.load("rob", demo_dir / "roberta")
    assert loaded["measured"]["device_bytes"] == 100 * 2**20
    assert engine_models.free_memory(True)["device"] == gib - device["used"]
    device["cached"] = 300 * 2**20  # freed tensors torch keeps cached: free for the next load, not for the driver
    device["used"] += 300 * 2**20
    assert engine_models.free_memory(True)["device"] == gib - device["used"] + 300 * 2**20
    with pytest.raises(InsufficientMemory, match="device memory"):
        models._check_room("huge", {"device_bytes": gib, "host_bytes": 0})
    device["cached"] = 100 * 2**20  # what unloading the model gives back to the cache, emptied by the unload
    freed = models.unload("rob", drain_s=5)["freed"]["device_bytes"]
    assert device["emptied"] >= 1 and freed >= 100 * 2**20
    emptied = device["emptied"]
    with pytest.raises(InsufficientMemory, match="ran out of memory"):
        models.load("too-big", demo_dir / "roberta")
    assert device["emptied"] == emptied + 1 and models.names == []
