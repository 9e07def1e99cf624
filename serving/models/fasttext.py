"""fastText/BlazingText subword vectors as tensors: one table lookup embeds a whole batch, OOV words included.

At load time gensim reads the `.bin`; from then on words map to rows of one matrix
(in-vocabulary vectors, then the n-gram buckets), using
fastText's own n-gram extraction and FNV-1a hash re-implemented here, so no gensim call
happens at request time.
"""

from __future__ import annotations

import functools
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
        self.rows_of = functools.lru_cache(maxsize=200_000)(self._rows_of)

    @classmethod
    def from_fasttext_file(cls, path: Path) -> SubwordVectors:
        from gensim.models.fasttext import load_facebook_vectors

        try:
            kv = load_facebook_vectors(str(path))
        except Exception as exc:  # gensim raises struct, value and EOF errors for bad files
            raise ModelLoadError(f"{path}: missing or corrupt fastText model ({exc})") from exc
        return cls.from_keyed_vectors(kv)

    @classmethod
    def from_keyed_vectors(cls, kv) -> SubwordVectors:
        dim = kv.vector_size
        ngrams = kv.vectors_ngrams if kv.bucket else np.zeros((0, dim), dtype=np.float32)
        matrix = np.concatenate([kv.vectors, ngrams]).astype(np.float32)
        return cls(matrix, dict(kv.key_to_index), kv.min_n, kv.max_n, kv.bucket)

    def _rows_of(self, word: str) -> tuple[int, ...]:
        index = self.vocab.get(word)
        if index is not None:
            return (index,)
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
