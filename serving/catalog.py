"""A multi-model endpoint's models: names, folders, footprints, and the catalog every process of the server shares.

The catalog is one JSON file in the server's private run folder. A front end that loads or unloads a model edits it
under a file lock (so two front ends asked for the same name cannot both load it); every front end reads it to
route a request (re-read only when the file was replaced), and an engine that starts again after a crash reloads
what it lists. Writers replace the file whole, so a reader never sees half an edit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serving.board import int_fields
from serving.errors import BadRequest, ModelNotFound

CATALOG_FILE = "models.json"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LOADING, READY, UNLOADING = "loading", "ready", "unloading"
VERSION_BYTES = 8


def check_name(name: object) -> str:
    """A model name is a path segment and a metrics label: letters, digits, '.', '_', '-', never '..'."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise BadRequest(f"model_name must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or "
                         f"digit, no '..'), got {name!r}")
    return name


def resolve_model_url(url: object, root: Path) -> Path:
    """The folder `url` names (a path, or file:// URL), which must resolve inside `root` (links followed first),
    as must every file in it: nothing outside the root is read."""
    if not isinstance(url, str) or not url or "\0" in url or len(url) > 4096:
        raise BadRequest(f"url must be the model's folder (a path of at most 4096 characters), got {url[:200]!r}"
                         if isinstance(url, str) else f"url must be the model's folder, got {url!r}")
    path = Path(url.removeprefix("file://"))
    root = root.resolve()
    try:
        resolved = (root / path).resolve()  # an absolute path stays itself
        if not _inside(resolved, root):
            raise BadRequest(f"url {url!r} is outside the models' folder {root}")
        if not (resolved / "config.json").is_file():
            raise ModelNotFound(f"{url}: no model there (no config.json)")
        for item in resolved.rglob("*"):
            if item.is_symlink() and not _inside(item.resolve(), root):
                raise BadRequest(f"url {url!r}: {item.relative_to(resolved)} links outside the models' folder")
    except OSError as exc:  # a name too long for the file system, a folder it may not read
        raise BadRequest(f"url {url[:200]!r} cannot be read ({exc.strerror or exc})") from exc
    return resolved


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_inside(path: Path, root: Path, what: str) -> Path:
    """A file a model's config names (the LSTM's vectors, say), which must stay inside the models' folder."""
    resolved = path.resolve()
    if not _inside(resolved, root.resolve()):
        raise BadRequest(f"{what} {path} is outside the models' folder {root}")
    return resolved


@dataclass
class Entry:
    """One model: its folder and state; `footprint` the estimate taken before loading, `loaded` what the engines
    reported once it was loaded (device, backend, measured memory)."""

    name: str
    path: str
    family: str
    state: str
    footprint: dict = field(default_factory=dict)
    loaded: list[dict] = field(default_factory=list)
    generation: str = ""  # which load of the name this is: a name unloaded and loaded again is a new model
    owner: int = 0  # the front end (pid) loading or unloading it

    @property
    def estimated_bytes(self) -> int:
        return int(self.footprint.get("device_bytes", 0)) + int(self.footprint.get("host_bytes", 0))


class Catalog:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / CATALOG_FILE
        self.lock_path = run_dir / (CATALOG_FILE + ".lock")
        counter = run_dir / (CATALOG_FILE + ".version")  # bumped by every edit: readers compare 8 mapped bytes
        with counter.open("a+b") as f:
            if os.fstat(f.fileno()).st_size < VERSION_BYTES:
                f.truncate(VERSION_BYTES)
            self._version = int_fields(mmap.mmap(f.fileno(), VERSION_BYTES))
        self._cache: tuple[int, dict[str, Entry]] = (-1, {})  # one tuple: threads replace it whole

    @property
    def version(self) -> int:
        return self._version[0]

    def entries(self) -> dict[str, Entry]:
        """The current models by name; the file is read again only after an edit."""
        version = self.version
        seen, entries = self._cache
        if version != seen:
            entries = self._read()
            self._cache = (version, entries)
        return entries

    def get(self, name: str) -> Entry | None:
        return self.entries().get(name)

    def _read(self) -> dict[str, Entry]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {name: Entry(**value) for name, value in raw.items()}

    @contextlib.contextmanager
    def editing(self) -> Iterator[dict[str, Entry]]:
        """The entries, to change in place; written back (atomically) when the block ends without an error."""
        with self.lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            yield entries
            temporary = self.path.with_name(f".{CATALOG_FILE}.{os.getpid()}")
            temporary.write_text(json.dumps({name: asdict(e) for name, e in entries.items()}))
            os.replace(temporary, self.path)
            self._version[0] = self.version + 1


def abandoned(entry: Entry) -> bool:
    """A load or unload whose front end died before finishing it (its entry would otherwise hold the name)."""
    if entry.state == READY or not entry.owner:
        return False
    try:
        os.kill(entry.owner, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def estimate_footprint(model_dir: Path, family: str, max_batch_tokens: int, max_batch_size: int,
                       on_gpu: bool) -> dict:
    """Bytes the model will hold once loaded, from its folder alone: weights (as stored: fp32 is the larger of the
    dtypes it may run in), for the LSTM its fastText vectors (host memory), and the activations of the largest
    batch the batcher may form (one layer's at a time, as inference keeps no graph; attention's scores grow with
    the square of the length). An estimate to refuse a load before it fails, not a measurement."""
    config = json.loads((model_dir / "config.json").read_text())
    weights = sum(p.stat().st_size for p in (model_dir / "model.safetensors", model_dir / "pytorch_model.bin")
                  if p.is_file())
    host = 0
    if family == "rnn":
        max_len = int(config.get("max_len", 100))
        tokens = min(max_batch_tokens, max_batch_size * max_len)
        width = int(config.get("embed_size", 300)) + 4 * int(config.get("lstm_hidden_size", 200))
        activations = tokens * width * 4 * 2
        vectors = model_dir / str(config.get("embeddings_file", "vectors.bin"))
        host = vectors.stat().st_size if vectors.is_file() else 0
    else:
        max_len = int(config.get("max_position_embeddings", 514)) - 2
        tokens = min(max_batch_tokens, max_batch_size * max_len)
        hidden = int(config.get("hidden_size", 768))
        width = 4 * hidden + int(config.get("intermediate_size", 4 * hidden))
        attention = int(config.get("num_attention_heads", 12)) * tokens * min(max_len, tokens) * 4
        activations = tokens * width * 4 + attention
    device = weights + activations
    if not on_gpu:  # all of it is host memory
        host, device = host + device, 0
    return {"device_bytes": int(device), "host_bytes": int(host), "weights_bytes": int(weights),
            "activation_bytes": int(activations)}
