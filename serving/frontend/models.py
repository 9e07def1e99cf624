"""A front end's side of a multi-model endpoint: the /models API (SageMaker's contract for custom containers) and
each request's model.

Loading a model: the name and folder are checked, the catalog (serving.catalog) reserves the name and its estimated
memory, this front end loads the model's text side (tokenizer or word vectors), and every engine loads and warms up
the model on its accelerator, off their request paths. Other front ends load a model's text side when its first
request reaches them. Unloading: the catalog stops new requests at every front end (404), then each engine lets the
model's queued requests finish and frees it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from serving.artifacts import detect_family
from serving.catalog import (
    LOADING,
    READY,
    UNLOADING,
    Catalog,
    Entry,
    abandoned,
    check_inside,
    check_name,
    estimate_footprint,
    resolve_model_url,
)
from serving.config import Settings
from serving.errors import BadRequest, InsufficientMemory, ModelExists, ModelLoadError, ModelNotFound, NotReady
from serving.frontend.engines import EngineClient, ModelQueue
from serving.frontend.handlers import Handler
from serving.service import InferenceService

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 600  # SageMaker's own limit on a model's download and load is of this order
PAGE = 1000  # models per page of GET /models


class ModelSet:
    def __init__(self, run_dir: Path, settings: Settings, client: EngineClient) -> None:
        self.catalog = Catalog(run_dir)
        self.settings = settings
        self.client = client
        self.root = Path(settings.models_root)
        self._handlers: dict[str, tuple[str, Handler]] = {}  # name -> (its load's generation, its handler here)
        self._pruned_at = -1  # the catalog version the handlers were last checked against
        self._lock = threading.Lock()  # held for dict updates only, never while a text side loads
        self._building: dict[tuple[str, str], threading.Lock] = {}

    # the request path
    def handler(self, name: str) -> Handler:
        """The loaded model's handler; 404 before any work when no such model is loaded."""
        entry = self._loaded(name)
        known = self._handlers.get(name)
        if known is not None and known[0] == entry.generation:
            return known[1]
        with self._lock:
            building = self._building.setdefault((name, entry.generation), threading.Lock())
        with building:  # one build per load of a name at a time; requests for other models never wait for it
            known = self._handlers.get(name)
            if known is None or known[0] != entry.generation:
                known = (entry.generation, self._build(name, Path(entry.path), entry.generation))
                with self._lock:
                    listed = self.catalog.get(name)
                    if listed is not None and listed.generation == entry.generation:  # not replaced meanwhile
                        self._handlers[name] = known
        return known[1]

    def built(self, name: str) -> Handler | None:
        """handler() when its text side is already loaded here (a look-up an event loop may make), else None."""
        entry = self._loaded(name)
        known = self._handlers.get(name)
        return known[1] if known is not None and known[0] == entry.generation else None

    def _loaded(self, name: str) -> Entry:
        if self.catalog.version != self._pruned_at:
            self._forget_unlisted()
        entry = self.catalog.get(name)
        if entry is None or entry.state != READY:
            raise ModelNotFound(f"model {name!r} is not loaded"
                                + (f" (it is {entry.state})" if entry is not None else ""))
        return entry

    def _build(self, name: str, model_dir: Path, generation: str) -> Handler:
        from serving.frontend.asgi import load_text_side

        text_side = load_text_side(model_dir, self.settings)
        queue = ModelQueue(self.client, name, generation)
        return Handler(InferenceService(text_side, self.settings, model_dir, queue=queue))

    def _forget_unlisted(self) -> None:
        """Text sides of models no longer loaded (or loaded again since) are dropped, once per catalog change."""
        with self._lock:
            self._pruned_at = self.catalog.version  # before reading: an edit in between is seen next time
            listed = self.catalog.entries()
            for name in [n for n, (generation, _) in self._handlers.items()
                         if n not in listed or listed[n].generation != generation]:
                del self._handlers[name]
            for key in [k for k in self._building if k[0] not in listed or listed[k[0]].generation != k[1]]:
                del self._building[key]

    # the /models API
    def load(self, body: object) -> dict:
        if not isinstance(body, dict):
            raise BadRequest('the body must be a JSON object: {"model_name": NAME, "url": FOLDER}')
        name = check_name(body.get("model_name"))
        model_dir = resolve_model_url(body.get("url"), self.root)
        family, footprint = self._inspect(model_dir, str(body.get("url")))
        generation = self._reserve(name, model_dir, family, footprint)
        try:
            if family == "rnn":
                from serving.models.rnn_text import prepare_shared_vectors

                prepare_shared_vectors(model_dir)  # once, before the engines and other front ends map them
            handler = self._build(name, model_dir, generation)
            replies = self.client.control("load", name, str(model_dir), generation, LOAD_TIMEOUT_S)
            failed = [r for r in replies if r.error_kind]
            if any(r.error_kind == ModelExists.__name__ for r in failed):  # the catalog decides 409, not an engine
                raise NotReady(f"an engine still holds an earlier load of model {name!r}; retry")
            if failed:
                failed[0].raise_error()
        except BaseException:
            # Out of the catalog first: an engine that loaded it (or finishes loading it after a timeout) lets it
            # go when it next compares its models with the catalog, even one that this unload cannot reach.
            with self.catalog.editing() as entries:
                if entries.get(name) is not None and entries[name].generation == generation:
                    del entries[name]
            self._quietly_unload(name, generation)
            raise
        with self.catalog.editing() as entries:
            entry = entries[name]
            entry.state = READY
            entry.loaded = [r.detail or {} for r in replies]
        with self._lock:
            self._handlers[name] = (generation, handler)
        log.info("model %s loaded from %s on %d engine(s)", name, model_dir, len(replies))
        return self.describe(name)

    def _inspect(self, model_dir: Path, url: str) -> tuple[str, dict]:
        """The folder's family and estimated footprint; 404 for a folder that holds no model this server knows."""
        try:
            family = detect_family(model_dir)
            if family == "rnn":
                config = json.loads((model_dir / "config.json").read_text())
                check_inside(model_dir / str(config.get("embeddings_file", "vectors.bin")), self.root,
                             "the LSTM's embeddings_file")
            s = self.settings
            return family, estimate_footprint(model_dir, family, s.max_batch_tokens, s.max_batch_size, on_gpu=False)
        except BadRequest:
            raise
        except Exception as exc:  # ModelLoadError, or a config.json of the wrong shape
            reason = exc.message if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            raise ModelNotFound(f"{url}: no model there ({reason})") from exc

    def _reserve(self, name: str, model_dir: Path, family: str, footprint: dict) -> str:
        """The name (409 if loaded or loading, 503 while it is being unloaded) and, with a memory budget, the
        estimated footprint (507 if over); returns this load's generation."""
        budget = int(self.settings.models_memory_mb * 2**20)
        with self.catalog.editing() as entries:
            for gone in [e for e in entries.values() if abandoned(e)]:  # their memory counts against the budget
                log.warning("model %s: the front end that was %s it is gone; freeing the name", gone.name,
                            "loading" if gone.state == LOADING else "unloading")
                del entries[gone.name]
            held = entries.get(name)
            if held is not None and held.state == UNLOADING:
                raise NotReady(f"model {name!r} is being unloaded; retry")
            elif held is not None:
                raise ModelExists(f"model {name!r} is already loaded" + (
                    "" if held.state == READY else f" (it is {held.state})"))
            entry = Entry(name, str(model_dir), family, LOADING, footprint,
                          generation=f"{time.time_ns()}-{os.getpid()}", owner=os.getpid())
            in_use = sum(e.estimated_bytes for e in entries.values())
            if budget and in_use + entry.estimated_bytes > budget:
                raise InsufficientMemory(
                    f"model {name!r} needs about {entry.estimated_bytes / 2**20:.0f} MiB; the loaded models hold "
                    f"{in_use / 2**20:.0f} MiB of the {budget / 2**20:.0f} MiB budget (models_memory_mb)")
            entries[name] = entry
            return entry.generation

    def _quietly_unload(self, name: str, generation: str) -> list:
        """Unload from the engines serving now; what they answer is logged, never raised."""
        try:
            replies = self.client.control("unload", name, "", generation, LOAD_TIMEOUT_S, every_engine=False)
        except Exception:
            log.exception("model %s: unloading from the engines failed; they let it go on their own", name)
            return []
        trouble = [r.error_message for r in replies if r.error_kind and r.error_kind != ModelNotFound.__name__]
        if trouble:
            log.warning("model %s: unloading from the engines: %s", name, trouble)
        return replies

    def unload(self, name: str) -> dict:
        check_name(name)
        with self.catalog.editing() as entries:
            entry = entries.get(name)
            if entry is not None and abandoned(entry):
                del entries[name]
                entry = None
            if entry is None or entry.state != READY:
                raise ModelNotFound(f"model {name!r} is not loaded"
                                    + (f" (it is {entry.state})" if entry is not None else ""))
            entry.state = UNLOADING  # every front end answers its new requests 404 from now on
            entry.owner = os.getpid()
            generation = entry.generation
        try:
            replies = self._quietly_unload(name, generation)
        finally:
            with self.catalog.editing() as entries:
                if entries.get(name) is not None and entries[name].generation == generation:
                    del entries[name]
            with self._lock:
                self._handlers.pop(name, None)
        log.info("model %s unloaded", name)
        return {"modelName": name, "freed": [r.detail for r in replies if r.detail]}

    def describe(self, name: str) -> dict:
        check_name(name)
        entry = self.catalog.get(name)
        if entry is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        first = entry.loaded[0] if entry.loaded else {}
        return {"modelName": entry.name, "modelUrl": entry.path, "state": entry.state, "family": entry.family,
                "labels": first.get("labels", []), "device": first.get("device"), "backend": first.get("backend"),
                "memory": {"estimated": entry.footprint,
                           "measured_per_engine": [e.get("measured", {}) for e in entry.loaded]}}

    def listing(self, page_token: str | None) -> dict:
        try:
            start = int(page_token or 0)
        except ValueError as exc:
            raise BadRequest(f"next_page_token must be one this server returned, got {page_token!r}") from exc
        if start < 0:
            raise BadRequest(f"next_page_token must be one this server returned, got {page_token!r}")
        ready = [e for _, e in sorted(self.catalog.entries().items()) if e.state == READY]
        page = ready[start : start + PAGE]
        answer: dict = {"models": [{"modelName": e.name, "modelUrl": e.path} for e in page]}
        if start + PAGE < len(ready):
            answer["nextPageToken"] = str(start + PAGE)
        return answer

