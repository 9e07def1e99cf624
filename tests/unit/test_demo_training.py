"""The demo build's unseen-word training (model_artifacts/build_demo.py): made-up words go into comments without
touching their words or labels, and made-up-only comments are labelled benign."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import model_artifacts_script


@pytest.fixture(scope="module")
def build_demo():
    return model_artifacts_script("build_demo")


def test_each_chosen_comment_gets_one_made_up_word_and_keeps_its_own(build_demo):
    texts = [f"comment number {i} says hello" for i in range(400)]
    known = build_demo.corpus_words(texts)
    changed = build_demo.with_unseen_words(texts, 0.5, np.random.default_rng(0), known)
    assert len(changed) == len(texts)
    grown = 0
    for before, after in zip(texts, changed, strict=True):
        words, new_words = before.split(), after.split()
        if new_words == words:
            continue
        grown += 1
        assert len(new_words) == len(words) + 1
        extra = next(i for i, w in enumerate(new_words) if i >= len(words) or w != words[i])
        assert new_words[:extra] + new_words[extra + 1 :] == words  # the comment's words, in order
        assert new_words[extra].isalpha() and new_words[extra] not in known
    assert 150 < grown < 250  # about half
    assert build_demo.with_unseen_words(texts, 0.0, np.random.default_rng(0), known) == texts


def test_made_up_words_are_no_corpus_word_and_spell_no_abuse(build_demo):
    known = {"brick", "lake", "spoon", "plonk"}
    rng = np.random.default_rng(0)
    words = [build_demo.made_up_word(rng, known) for _ in range(5000)]
    assert not set(words) & known
    assert all(len(w) >= build_demo.MADE_UP_MIN_LETTERS and w.isalpha() for w in words)
    assert not [w for w in words if any(bad in w for bad in build_demo.NOT_IN_MADE_UP)]
    assert len(set(words)) > 4000
    # The generator can spell abuse by itself ("kike", "cosdickwu" came out of an earlier build): the filter matters.
    unfiltered = ["".join(rng.choice(build_demo.ONSETS) + rng.choice(build_demo.VOWELS) + rng.choice(build_demo.CODAS)
                          for _ in range(rng.integers(1, 4))) for _ in range(20000)]
    assert [w for w in unfiltered if any(bad in w for bad in build_demo.NOT_IN_MADE_UP)]


def test_made_up_comments_are_benign_and_vary(build_demo):
    texts, y = build_demo.made_up_comments(200, 7, np.random.default_rng(0), set())
    assert y.shape == (200, 7) and not y.any()
    assert all(1 <= len(t.split()) <= 4 and t.replace(" ", "").isalpha() for t in texts)
    assert len(set(texts)) > 190
    assert len({w for t in texts for w in t.split()}) > 300
