"""A front end's side of a multi-model endpoint: the /models API (SageMaker's contract for custom containers) and
each request's model.

Loading a model: the name and folder are checked, the catalog (serving.catalog) reserves the name and its estimated
memory, this front end loads the model's text side (tokenizer or word vectors), and every engine loads and warms up
the model on its accelerator, off their request paths. Other front ends load a model's text side when its first
request reaches them. Unloading: the catalog stops new requests at every front end (404), then each engine lets the
model's queued requests finish and frees it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from serving.artifacts import detect_family
from serving.catalog import LOADING, READY, UNLOADING, Catalog, Entry, check_name, estimate_footprint, resolve_model_url
from serving.config import Settings
from serving.errors import BadRequest, InsufficientMemory, ModelExists, ModelLoadError, ModelNotFound
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
        self._pruned_at: tuple[int, int] | None = None  # the catalog version the handlers were last checked against
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self.client.alive

    def why_not_alive(self) -> str:
        return self.client.why_not_alive()

    # the request path
    def handler(self, name: str) -> Handler:
        """The loaded model's handler; 404 before any work when no such model is loaded."""
        entry = self.catalog.get(name)
        if self.catalog.version != self._pruned_at:
            self._forget_unlisted()
        if entry is None or entry.state != READY:
            raise ModelNotFound(f"model {name!r} is not loaded"
                                + (f" (it is {entry.state})" if entry is not None else ""))
        known = self._handlers.get(name)
        if known is not None and known[0] == entry.generation:
            return known[1]
        with self._lock:
            known = self._handlers.get(name)
            if known is None or known[0] != entry.generation:
                known = self._handlers[name] = (entry.generation, self._build(name, Path(entry.path)))
        return known[1]

    def _build(self, name: str, model_dir: Path) -> Handler:
        from serving.frontend.wsgi import load_text_side

        text_side = load_text_side(model_dir, self.settings)
        return Handler(InferenceService(text_side, self.settings, model_dir, queue=ModelQueue(self.client, name)))

    def _forget_unlisted(self) -> None:
        """Text sides of models no longer loaded (or loaded again since) are dropped, once per catalog change."""
        with self._lock:
            listed = self.catalog.entries()
            self._pruned_at = self.catalog.version
            for name in [n for n, (generation, _) in self._handlers.items()
                         if n not in listed or listed[n].generation != generation]:
                del self._handlers[name]

    # the /models API
    def load(self, body: object) -> dict:
        if not isinstance(body, dict):
            raise BadRequest('the body must be a JSON object: {"model_name": NAME, "url": FOLDER}')
        name = check_name(body.get("model_name"))
        model_dir = resolve_model_url(body.get("url"), self.root)
        try:
            family = detect_family(model_dir)
        except ModelLoadError as exc:
            raise ModelNotFound(f"{body.get('url')}: no model there ({exc.message})") from exc
        s = self.settings
        footprint = estimate_footprint(model_dir, family, s.max_batch_tokens, s.max_batch_size, on_gpu=False)
        self._reserve(name, model_dir, family, footprint)
        try:
            if family == "rnn":
                from serving.models.rnn_text import prepare_shared_vectors

                prepare_shared_vectors(model_dir)  # once, before the engines and other front ends map them
            handler = self._build(name, model_dir)
            replies = self.client.control("load", name, str(model_dir), LOAD_TIMEOUT_S)
            failed = [r for r in replies if r.error_kind]
            if failed:
                if len(failed) < len(replies):  # the engines that did load it give it back
                    self.client.control("unload", name, "", LOAD_TIMEOUT_S)
                failed[0].raise_error()
        except BaseException:
            with self.catalog.editing() as entries:
                entries.pop(name, None)
            raise
        with self.catalog.editing() as entries:
            entry = entries[name]
            entry.state = READY
            entry.loaded = [r.detail or {} for r in replies]
        with self._lock:
            self._handlers[name] = (entry.generation, handler)
        log.info("model %s loaded from %s on %d engine(s)", name, model_dir, len(replies))
        return self.describe(name)

    def _reserve(self, name: str, model_dir: Path, family: str, footprint: dict) -> None:
        """The name (409 if taken) and, with a memory budget, the estimated footprint (507 if over)."""
        budget = int(self.settings.models_memory_mb * 2**20)
        with self.catalog.editing() as entries:
            if name in entries:
                raise ModelExists(f"model {name!r} is already loaded" + (
                    "" if entries[name].state == READY else f" (it is {entries[name].state})"))
            entry = Entry(name, str(model_dir), family, LOADING, footprint,
                          generation=f"{time.time_ns()}-{os.getpid()}")
            held = sum(e.estimated_bytes for e in entries.values())
            if budget and held + entry.estimated_bytes > budget:
                raise InsufficientMemory(
                    f"model {name!r} needs about {entry.estimated_bytes / 2**20:.0f} MiB; the loaded models hold "
                    f"{held / 2**20:.0f} MiB of the {budget / 2**20:.0f} MiB budget (models_memory_mb)")
            entries[name] = entry

    def unload(self, name: str) -> dict:
        check_name(name)
        with self.catalog.editing() as entries:
            entry = entries.get(name)
            if entry is None or entry.state != READY:
                raise ModelNotFound(f"model {name!r} is not loaded"
                                    + (f" (it is {entry.state})" if entry is not None else ""))
            entry.state = UNLOADING  # every front end answers its new requests 404 from now on
        try:
            replies = self.client.control("unload", name, "", LOAD_TIMEOUT_S)
        finally:
            with self.catalog.editing() as entries:
                entries.pop(name, None)
            with self._lock:
                self._handlers.pop(name, None)
        errors = [r for r in replies if r.error_kind and r.error_kind != ModelNotFound.__name__]
        if errors:
            log.warning("model %s unloaded with errors: %s", name, [r.error_message for r in errors])
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

