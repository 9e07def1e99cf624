"""fastText/BlazingText subword vectors as tensors: one table lookup embeds a whole batch, OOV words included.

Words map to rows of one matrix (in-vocabulary vectors, then the n-gram buckets), using fastText's own n-gram
extraction and FNV-1a hash re-implemented here, so no gensim call happens at request time.

The matrix is read from the `.bin` once per host: the first load (serve's master, before it forks) has gensim
read it and writes the float32 matrix and the vocabulary to a cache folder; every process then memory-maps
the matrix, so all workers share one copy in the page cache (a 2M-word, 300-dimension BlazingText model is
4.8 GB: one copy per worker did not fit).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from serving.errors import ModelLoadError

_FNV_OFFSET = 2166136261
_FNV_PRIME = 16777619


def fasttext_hash(data: bytes) -> int:
    """fastText's 32-bit FNV-1a, which sign-extends each byte as a C `int8_t` before xor."""
    h = _FNV_OFFSET
    for byte in data:
        h ^= (byte | 0xFFFFFF00) if byte >= 128 else byte
        h = (h * _FNV_PRIME) & 0xFFFFFFFF
    return h


def character_ngrams(word: str, min_n: int, max_n: int) -> list[bytes]:
    """The n-grams fastText hashes for `word`: over UTF-8 of `<word>`, counted in characters."""
    data = f"<{word}>".encode()
    ngrams = []
    for start in range(len(data)):
        if data[start] & 0xC0 == 0x80:  # a UTF-8 continuation byte never starts an n-gram
            continue
        end, n = start, 1
        while end < len(data) and n <= max_n:
            end += 1
            while end < len(data) and data[end] & 0xC0 == 0x80:
                end += 1
            if n >= min_n and not (n == 1 and (start == 0 or end == len(data))):
                ngrams.append(data[start:end])
            n += 1
    return ngrams


class SubwordVectors:
    """Rows of `matrix` for each word; a word's vector is the mean of its rows (none: zeros)."""

    def __init__(
        self, matrix: np.ndarray, vocab: dict[str, int], min_n: int, max_n: int, buckets: int
    ) -> None:
        self.matrix = matrix
        self.vocab = vocab
        self.min_n, self.max_n, self.buckets = min_n, max_n, buckets
        self.dim = matrix.shape[1]
        self._cached_ngram_rows = functools.lru_cache(maxsize=CACHED_WORDS)(self._ngram_rows)

    def rows_of(self, word: str) -> tuple[int, ...]:
        """The word's matrix rows: its own row, or (out of vocabulary) its hashed n-grams' rows. Only the n-gram
        rows of words of ordinary length are cached, and only so many: a cached word holds ~90 Python ints, and
        a stream of distinct random words would otherwise grow the cache by hundreds of megabytes."""
        index = self.vocab.get(word)
        if index is not None:
            return (index,)
        if len(word) <= CACHED_WORD_CHARS:
            return self._cached_ngram_rows(word)
        return self._ngram_rows(word)

    @classmethod
    def from_fasttext_file(cls, path: Path, cache_root: Path | None = None) -> SubwordVectors:
        """The vectors of a fastText `.bin`, memory-mapped from the host's cache (built on first use)."""
        folder = prepare_cache(path, cache_root)
        meta = json.loads((folder / CACHE_META).read_text())
        words = json.loads((folder / "vocab.json").read_text())
        matrix = np.load(folder / "matrix.npy", mmap_mode="r")
        return cls(matrix, {word: i for i, word in enumerate(words)}, meta["min_n"], meta["max_n"], meta["buckets"])

    def _ngram_rows(self, word: str) -> tuple[int, ...]:
        if not self.buckets:
            return ()
        offset = len(self.vocab)
        return tuple(
            offset + fasttext_hash(g) % self.buckets for g in character_ngrams(word, self.min_n, self.max_n)
        )

    def vector(self, word: str) -> np.ndarray:
        """One word's vector, as gensim's `kv[word]` computes it (used by tests and tools)."""
        rows = self.rows_of(word)
        if not rows:
            return np.zeros(self.dim, dtype=np.float32)
        return self.matrix[list(rows)].mean(axis=0)


CACHED_WORD_CHARS = 24
CACHED_WORDS = 20_000  # out-of-vocabulary words whose n-gram rows are kept: at most ~80 MB per worker
CACHE_ENV = "SERVING_VECTORS_CACHE"
CACHE_META = "meta.json"  # written last: a folder without it is incomplete


def cache_root(given: Path | None = None) -> Path:
    """The cache's root: given, else $SERVING_VECTORS_CACHE, else a folder of this user's in the temp dir,
    private (0700) and checked to be theirs, so another local user cannot plant or read the matrices."""
    if given is not None:
        return given
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = Path(tempfile.gettempdir()) / f"toxserve-vectors-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        stat = root.lstat()
    except OSError as exc:
        raise ModelLoadError(f"cannot create the vectors cache {root} ({exc}); set {CACHE_ENV}") from exc
    if not root.is_dir() or root.is_symlink() or stat.st_uid != os.getuid() or stat.st_mode & 0o077:
        raise ModelLoadError(f"the vectors cache {root} is not a private folder of this user (uid {os.getuid()}); "
                             f"remove it or set {CACHE_ENV}")
    return root


def cache_folder(path: Path, root: Path | None = None) -> Path:
    """Where a `.bin`'s matrix is cached: keyed by its size, modification time and first and last megabyte, not
    its path, so each extraction of the same model.tar.gz (a new temporary folder) finds the same cache."""
    root = cache_root(root)
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{int(stat.st_mtime)}".encode())
    with path.open("rb") as stream:
        digest.update(stream.read(1 << 20))
        stream.seek(max(0, stat.st_size - (1 << 20)))
        digest.update(stream.read(1 << 20))
    return root / digest.hexdigest()[:24]


def prepare_cache(path: Path, cache_root: Path | None = None) -> Path:
    """The cache folder of `path`, written (once, atomically) if it is not there yet."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing or corrupt fastText model (no such file)")
    folder = cache_folder(path, cache_root)
    if (folder / CACHE_META).is_file():
        return folder
    from gensim.models.fasttext import load_facebook_vectors

    try:
        kv = load_facebook_vectors(str(path))
    except Exception as exc:  # gensim raises struct, value and EOF errors for bad files
        raise ModelLoadError(f"{path}: missing or corrupt fastText model ({exc})") from exc
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        _write_cache(kv, path, staging, folder)
    except OSError as exc:  # a full disk, a read-only or foreign cache folder: a load error, not a crash
        raise ModelLoadError(f"{path}: cannot write the vectors cache under {folder.parent} ({exc}); "
                             f"set {CACHE_ENV} to a writable folder") from exc
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_cache(kv, path: Path, staging: Path, folder: Path) -> None:
    rows = len(kv.vectors) + (len(kv.vectors_ngrams) if kv.bucket else 0)
    matrix = np.lib.format.open_memmap(staging / "matrix.npy", mode="w+", dtype=np.float32,
                                       shape=(rows, kv.vector_size))
    matrix[: len(kv.vectors)] = kv.vectors
    if kv.bucket:
        matrix[len(kv.vectors):] = kv.vectors_ngrams
    matrix.flush()
    del matrix
    (staging / "vocab.json").write_text(json.dumps(list(kv.index_to_key)))
    (staging / CACHE_META).write_text(json.dumps({"min_n": kv.min_n, "max_n": kv.max_n, "buckets": kv.bucket,
                                                   "source": str(path)}))
    try:
        staging.rename(folder)
    except OSError:
        if not (folder / CACHE_META).is_file():  # the leftovers of a writer that died (else: another process
            shutil.rmtree(folder, ignore_errors=True)  # finished the same cache first, and theirs is as good)
            staging.rename(folder)
