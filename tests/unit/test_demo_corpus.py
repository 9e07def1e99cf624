"""The demo corpus's split: held-out templates are new shapes of words seen in training, and the corpus is stable
under edits (model_artifacts/make_corpus.py)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from tests.conftest import model_artifacts_script, within_one_edit

MODEL_ARTIFACTS = Path(__file__).resolve().parents[2] / "model_artifacts"


@pytest.fixture(scope="module")
def make_corpus():
    return model_artifacts_script("make_corpus")


def test_the_committed_corpus_is_what_make_corpus_writes(make_corpus):
    with (MODEL_ARTIFACTS / "data" / "comments.csv").open(newline="", encoding="utf-8") as f:
        committed = [{k: v for k, v in row.items() if k != "id"} for row in csv.DictReader(f)]
    columns = ["comment_text", *make_corpus.LABELS, "split"]
    assert committed == [{k: str(row[k]) for k in columns} for row in make_corpus.compose_rows()]


def test_every_slot_of_a_held_out_template_is_used_in_training(make_corpus):
    rows = make_corpus.compose_rows()
    templated = {row["unit"]: row["split"] for row in rows if "{" in row["unit"]}
    in_training = {slot for unit, split in templated.items() if split == "train"
                   for slot in re.findall(r"{(\w+)}", unit)}
    held_out = [unit for unit, split in templated.items() if split == "test"]
    assert len(held_out) >= 0.2 * len(templated)
    unseen = {unit: set(re.findall(r"{(\w+)}", unit)) - in_training for unit in held_out}
    assert not {unit: slots for unit, slots in unseen.items() if slots}


def test_no_held_out_template_is_a_reordered_extended_or_one_word_changed_other_template(make_corpus):
    templates = [t for ts in make_corpus.TEMPLATES.values() for t in ts]
    held_out = {row["unit"] for row in make_corpus.compose_rows() if row["split"] == "test" and "{" in row["unit"]}
    assert held_out
    assert make_corpus.related("{warn}, {know_claim}", "{know_claim}. {warn}")
    assert make_corpus.related("i will {hit_verb} {body_part}", "i'll {hit_verb} {body_part} {when}")
    assert not make_corpus.related("i will {plan} {later}", "i am going to {plan} {later}")
    assert not [(t, other) for t in held_out for other in templates if other != t and make_corpus.related(t, other)]


def test_adding_a_template_leaves_the_other_units_comments_alone(make_corpus, monkeypatch):
    before = make_corpus.compose_rows()
    monkeypatch.setitem(make_corpus.TEMPLATES, "benign", [*make_corpus.TEMPLATES["benign"], "the {noun} {noun_pred}!"])
    after = make_corpus.compose_rows()
    def by_unit(rows: list[dict]) -> dict[str, tuple[set[str], set[str]]]:
        units: dict[str, tuple[set[str], set[str]]] = {}
        for row in rows:
            texts, splits = units.setdefault(row["unit"], (set(), set()))
            texts.add(row["comment_text"])
            splits.add(row["split"])
        return units

    old, new = by_unit(before), by_unit(after)
    assert set(new) - set(old) == {"the {noun} {noun_pred}!"}
    # Every other unit keeps its comments (templates share their category's count, so each may lose its last
    # few), and the held-out quarter, one template larger, moves at most two templates between the splits.
    rewritten = [unit for unit in old if not (new[unit][0] <= old[unit][0] and len(old[unit][0] - new[unit][0]) <= 4)]
    assert not rewritten
    moved = [unit for unit in old if new[unit][1] != old[unit][1]]
    assert len(moved) <= 2 and all("{" in unit for unit in moved), moved


def test_twinned_units_are_found_by_reordering_one_word_and_containment(make_corpus):
    units = {
        "a": ["you are a total clown"],
        "b": ["a total clown you are"],  # a reordered
        "c": ["you are a complete clown"],  # a with one word changed
        "d": ["honestly you are a total clown today"],  # holds a
        "e": ["what a lovely day"],
        "f": ["what a lovely sunny day"],  # e with one word inserted
        "g": ["the museum opens on monday"],  # nothing like the others
        "h": ["good luck", "have fun at the match"],  # "good luck" is inside others' comments: too short to count
        "i": ["good luck with the exam"],
        "j": ["the kettle is on sale"],  # a hand-written sentence ...
        "{noun} {noun_pred}": ["the kettle is on sale this week", "the lamp looks nice"],  # ... inside a template's
        "k": ["you're a total clown"],  # a, spelled with a contraction
    }
    assert make_corpus.twinned_units(units) == {*"abcdefjk", "{noun} {noun_pred}"}


def test_no_held_out_sentence_is_near_a_training_sentence(make_corpus):
    """Checked sentence by sentence, independently of `twinned_units`: a held-out core sentence is no training
    core reordered, with one word substituted, inserted or dropped, and neither holds the other (runs of three
    words or more)."""
    rows = make_corpus.compose_rows()
    train = {tuple(make_corpus.shape(row["core"])) for row in rows if row["split"] == "train"}
    test = {tuple(make_corpus.shape(row["core"])) for row in rows if row["split"] == "test"}
    assert len(test) > 500
    by_length: dict[int, list[tuple[str, ...]]] = {}
    for words in train:
        by_length.setdefault(len(words), []).append(words)
    train_sorted = {tuple(sorted(words)) for words in train}
    train_text = "\n".join(" " + " ".join(words) + " " for words in train)

    near = []
    for words in test:
        runs = {words[i:j] for i in range(len(words)) for j in range(i + 3, len(words) + 1)}
        if (tuple(sorted(words)) in train_sorted or runs & train
                or (len(words) >= 3 and f" {' '.join(words)} " in train_text)
                or any(within_one_edit(words, other) for n in (len(words) - 1, len(words), len(words) + 1)
                       for other in by_length.get(n, []))):
            near.append(" ".join(words))
    assert not near
