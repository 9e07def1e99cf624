"""The tensorised fastText lookup equals gensim's vectors, in-vocabulary and unseen words alike."""

from __future__ import annotations

import errno
import os
import stat
import tempfile

import numpy as np
import pytest
from gensim.models import FastText
from gensim.models.fasttext import load_facebook_vectors, save_facebook_model
from gensim.models.fasttext_inner import compute_ngrams_bytes, ft_hash_bytes

from serving.models.fasttext import SubwordVectors, character_ngrams, fasttext_hash

WORDS = ["idiot", "idoit", "stuuuupid", "m0r0n", "you", "the", "café", "naïve", "日本語", "a", "x", "zzzzqqq",
         "don't", "!!!", "sh*t", "supercalifragilistic", "ıi"]


@pytest.mark.parametrize("word", WORDS)
def test_hash_and_ngrams_equal_gensim(word):
    assert character_ngrams(word, 3, 6) == compute_ngrams_bytes(word, 3, 6)
    for ngram in compute_ngrams_bytes(word, 1, 6):
        assert fasttext_hash(ngram) == ft_hash_bytes(ngram)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    sentences = [["you", "are", "an", "idiot"], ["the", "map", "is", "fun"], ["café", "naïve", "you"]] * 20
    model = FastText(vector_size=16, min_count=1, bucket=500, min_n=2, max_n=5, epochs=3, seed=1, workers=1)
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=3)
    path = tmp_path_factory.mktemp("ft") / "vectors.bin"
    save_facebook_model(model, str(path))
    return path


@pytest.mark.parametrize("fixture", ["small_model", "demo_vectors"])
def test_vectors_equal_gensim(fixture, request):
    path = request.getfixturevalue(fixture)
    gensim_vectors = load_facebook_vectors(str(path))
    ours = SubwordVectors.from_fasttext_file(path)
    in_vocab = gensim_vectors.index_to_key[:50]
    assert in_vocab and all(w in ours.vocab for w in in_vocab)
    for word in [*in_vocab, *WORDS, "idiiot", "stupdi", "moronnn", "xyzzy"]:
        np.testing.assert_allclose(ours.vector(word), gensim_vectors[word], atol=1e-6, err_msg=word)


@pytest.fixture
def demo_vectors(rnn_dir):
    return rnn_dir / "vectors.bin"


def test_batch_embedding_is_one_lookup_matching_per_word_vectors(rnn_dir):
    from serving.models.rnn import RNNClassifier

    classifier = RNNClassifier(rnn_dir)
    texts = ["u r an idoit", "this is compleetly stuuupid!!", ""]
    embeddings, lengths = classifier.batch_tensors(classifier.encode(texts))
    assert lengths.tolist() == [4, 5, 0]
    for b, text in enumerate(texts):
        for w, word in enumerate(classifier.split_words(text)):
            np.testing.assert_allclose(embeddings[b, w].numpy(), classifier.vectors.vector(word), atol=1e-6)
    assert not embeddings[2].any()  # padding and empty texts embed to zeros


def test_the_matrix_is_cached_once_per_host_and_memory_mapped_read_only(small_model, tmp_path):
    import shutil
    import tarfile

    from serving import resolve_model_dir
    from serving.models.fasttext import cache_folder

    first = SubwordVectors.from_fasttext_file(small_model, tmp_path / "cache")
    assert isinstance(first.matrix, np.memmap) and not first.matrix.flags.writeable
    folder = cache_folder(small_model, tmp_path / "cache")
    written = (folder / "matrix.npy").stat().st_mtime_ns
    # the same file from a model.tar.gz, extracted twice to new folders (each worker restart, each start)
    source = tmp_path / "model"
    source.mkdir()
    shutil.copy2(small_model, source / "vectors.bin")
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
        tar.add(source / "vectors.bin", arcname="vectors.bin")
    for _ in range(2):
        extracted = resolve_model_dir(tmp_path / "model.tar.gz") / "vectors.bin"
        again = SubwordVectors.from_fasttext_file(extracted, tmp_path / "cache")
        assert cache_folder(extracted, tmp_path / "cache") == folder
        np.testing.assert_array_equal(again.matrix, first.matrix)
    assert (folder / "matrix.npy").stat().st_mtime_ns == written  # read, never rewritten
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]


def test_an_unfinished_cache_is_rebuilt_and_a_corrupt_file_is_a_load_error(small_model, tmp_path):
    from serving.errors import ModelLoadError
    from serving.models.fasttext import CACHE_META, cache_folder

    SubwordVectors.from_fasttext_file(small_model, tmp_path / "cache")
    folder = cache_folder(small_model, tmp_path / "cache")
    (folder / CACHE_META).unlink()  # as if a process died while writing it: leftovers, no meta
    rebuilt = SubwordVectors.from_fasttext_file(small_model, tmp_path / "cache")
    assert rebuilt.matrix.shape[0] > 0 and (folder / CACHE_META).is_file()
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError, match="missing or corrupt fastText model"):
        SubwordVectors.from_fasttext_file(broken, tmp_path / "cache")


def test_the_default_cache_is_a_private_folder_of_this_user(small_model, tmp_path, monkeypatch):
    from serving.errors import ModelLoadError
    from serving.models.fasttext import CACHE_ENV, cache_folder

    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    vectors = SubwordVectors.from_fasttext_file(small_model)
    root = tmp_path / f"toxserve-vectors-{os.getuid()}"
    assert cache_folder(small_model).parent == root and vectors.matrix.shape[0] > 0
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    root.chmod(0o777)  # as if another local user had made it first, for everyone to write into
    with pytest.raises(ModelLoadError, match="not a private folder of this user"):
        SubwordVectors.from_fasttext_file(small_model)


def test_a_cache_that_cannot_be_written_is_a_load_error_and_leaves_nothing_behind(small_model, tmp_path,
                                                                                   monkeypatch):
    from serving.errors import ModelLoadError

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(ModelLoadError, match="cannot write the vectors cache"):
        SubwordVectors.from_fasttext_file(small_model, not_a_folder)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", disk_full)
    root = tmp_path / "cache"
    with pytest.raises(ModelLoadError, match="No space left on device"):
        SubwordVectors.from_fasttext_file(small_model, root)
    assert list(root.iterdir()) == []  # the staging folder is gone


def test_long_words_are_not_kept_in_the_rows_cache(small_model, tmp_path):
    from serving.models.fasttext import CACHED_WORD_CHARS

    vectors = SubwordVectors.from_fasttext_file(small_model, tmp_path / "cache")
    for i in range(50):
        assert vectors.rows_of(f"{i:03d}" + "x" * 90)  # distinct 93-character words, hashed each time
    assert vectors._cached_ngram_rows.cache_info().currsize == 0
    word = "y" * CACHED_WORD_CHARS
    assert vectors.rows_of(word) == vectors.rows_of(word)
    assert vectors._cached_ngram_rows.cache_info().currsize == 1
    assert vectors.rows_of("idiot") == (vectors.vocab["idiot"],)  # in-vocabulary words need no cache
    assert vectors._cached_ngram_rows.cache_info().currsize == 1
    assert vectors._cached_ngram_rows.cache_info().maxsize <= 20_000
