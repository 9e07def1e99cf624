"""The demo corpus's split: held-out templates are new shapes of words seen in training, and the corpus is stable
under edits (model_artifacts/make_corpus.py)."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest

MODEL_ARTIFACTS = Path(__file__).resolve().parents[2] / "model_artifacts"


@pytest.fixture(scope="module")
def make_corpus():
    sys.path.insert(0, str(MODEL_ARTIFACTS))
    try:
        import make_corpus

        yield make_corpus
    finally:
        sys.path.remove(str(MODEL_ARTIFACTS))


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
