"""Writes data/comments.csv: the demo corpus in the Jigsaw Unintended Bias CSV layout.

Core sentences come from sentences.py (written by hand for this repo): its lists, and its templates filled
from hand-written slot values. Comments are composed from them: an optional lead, one core sentence that
carries the labels, an optional tail, and typos for a share of them. Labels are fractions of 10 simulated
annotators, each voting with the core's probability plus noise, as in Jigsaw; positive means >= 0.5.

The split holds out whole units, a quarter of the hand-written sentences and up to a quarter of the templates
(every sentence of a held-out template), and only units none of whose sentences is near another unit's
(`twinned_units`: the same words reordered, one word substituted, inserted or dropped, or one sentence inside
the other for three words or more, compared after `shape`); `related` also keeps out templates whose text
could write such twins. Looser matches than those remain: a sentence inside another with a word changed, or
two words off ("could you {request}" / "can someone {request}"), so the test split is new sentences, not
always new phrasing. A held-out template also leaves each of its slots in some training template: the test
asks for new shapes of known words, not for words the corpus never taught. Every unit draws from a generator
of its own, seeded by its text, and the held-out ones are picked in a hash order, so adding or editing a unit
leaves the others' comments, labels and split mostly as they were (tests/unit/test_demo_corpus.py): templates
of its category give up their last few sentences to it, a sentence two units can write stays with the first,
and the held-out choice can move by a template or two. Re-run only to change the corpus:

    python model_artifacts/make_corpus.py
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
import re
from collections import Counter
from pathlib import Path

from sentences import (
    BENIGN,
    CONFUSERS,
    CRITICAL,
    EVERYDAY,
    IDENTITY,
    IDENTITY_BENIGN,
    IDENTITY_SEVERE,
    INSULT,
    INSULT_OBSCENE,
    LEADS,
    OBSCENE,
    SEXUAL,
    SEXUAL_OBSCENE,
    SLOTS,
    TAILS,
    TEMPLATED,
    TEMPLATES,
    THREAT,
    THREAT_SEVERE,
)

LABELS = ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack", "sexual_explicit"]
OUT = Path(__file__).resolve().parent / "data" / "comments.csv"
ANNOTATORS = 10

# name -> (sentences, per-label probability that an annotator marks it)
CATEGORIES: dict[str, tuple[list[str], dict[str, float]]] = {
    "benign": (BENIGN + EVERYDAY, {"toxicity": 0.03}),
    "confuser": (CONFUSERS, {"toxicity": 0.06, "insult": 0.03}),
    "identity_benign": (IDENTITY_BENIGN, {"toxicity": 0.05, "identity_attack": 0.04}),
    "critical": (CRITICAL, {"toxicity": 0.15, "insult": 0.06}),
    "insult": (INSULT, {"toxicity": 0.85, "insult": 0.85, "severe_toxicity": 0.05}),
    "obscene": (OBSCENE, {"toxicity": 0.8, "obscene": 0.8}),
    "insult_obscene": (INSULT_OBSCENE, {"toxicity": 0.95, "insult": 0.9, "obscene": 0.85, "severe_toxicity": 0.35}),
    "threat": (THREAT, {"toxicity": 0.85, "threat": 0.85, "severe_toxicity": 0.15}),
    "threat_severe": (
        THREAT_SEVERE,
        {"toxicity": 0.98, "threat": 0.9, "severe_toxicity": 0.75, "insult": 0.6, "obscene": 0.4},
    ),
    "identity": (IDENTITY, {"toxicity": 0.85, "identity_attack": 0.85, "insult": 0.3}),
    "identity_severe": (
        IDENTITY_SEVERE,
        {"toxicity": 0.98, "identity_attack": 0.95, "severe_toxicity": 0.65, "insult": 0.7},
    ),
    "sexual": (SEXUAL, {"toxicity": 0.8, "sexual_explicit": 0.85, "obscene": 0.25}),
    "sexual_obscene": (
        SEXUAL_OBSCENE,
        {"toxicity": 0.9, "sexual_explicit": 0.85, "obscene": 0.8, "insult": 0.5, "severe_toxicity": 0.2},
    ),
}
HAND_WRITTEN_COPIES = 3  # comments per hand-written core sentence
# Per templated one: they are many and alike. Benign ones twice, so everyday language (far more varied than
# abuse, whose templates share a few dozen words) is well covered.
TEMPLATED_COPIES = {"benign": 2, "toxic": 1}
HELD_OUT = 0.25  # share of each category's cores in the test split
SEED = 20221128
LEET = {"i": "1", "o": "0", "a": "@", "e": "3", "s": "$"}


def misspell(word: str, rng: random.Random) -> str:
    """One typo of the kinds seen online: drop, double, swap, stretch, or leetspeak."""
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(["drop", "double", "swap", "stretch", "leet"])
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "stretch":
        return word[:i] + word[i] * rng.randint(3, 5) + word[i + 1 :]
    return "".join(LEET.get(c, c) if rng.random() < 0.5 else c for c in word)


CONTRACTIONS = {"you are": "you're", "i am": "i'm", "do not": "don't", "it is": "it's", "cannot": "can't",
                "they are": "they're", "we are": "we're", "is not": "isn't", "i will": "i'll", "how is": "how's",
                "what is": "what's", "that is": "that's"}


def compose(core: str, rng: random.Random) -> str:
    if rng.random() < 0.4:
        for full, short in CONTRACTIONS.items():
            core = re.sub(rf"\b{full}\b", short, core)
    words = core.split()
    if rng.random() < 0.35:
        words = [misspell(w, rng) if rng.random() < 0.25 else w for w in words]
    text = " ".join(words)
    if rng.random() < 0.5:  # written as people who capitalise write
        text = re.sub(r"\bi\b", "I", text[0].upper() + text[1:])
    if rng.random() < 0.3:
        text = text.upper() if rng.random() < 0.15 else text + rng.choice([".", "!", "!!", "?!", "..."])
    lead = rng.choice(LEADS) + " " if rng.random() < 0.35 else ""
    return (lead + text + " " + rng.choice(TAILS)).strip()


def annotate(probabilities: dict[str, float], rng: random.Random) -> dict[str, float]:
    """Fraction of annotators voting yes, each item's probability jittered as raters disagree."""
    labels = {}
    for label in LABELS:
        p = probabilities.get(label, 0.01)
        p = min(max(p + rng.gauss(0, 0.1), 0.0), 1.0)
        labels[label] = sum(rng.random() < p for _ in range(ANNOTATORS)) / ANNOTATORS
    return labels


def unit_rng(unit: str) -> random.Random:
    """A generator of the unit's own (a template or a hand-written sentence), seeded by its text: editing one
    unit, or adding one, leaves every other unit's comments, typos and labels as they were."""
    return random.Random(f"{SEED}:{unit}")


def hash_order(units: list[str]) -> list[str]:
    """A fixed pseudo-random order that does not move when units are added or removed."""
    return sorted(units, key=lambda unit: hashlib.sha256(f"{SEED}:{unit}".encode()).digest())


def capacity(template: str) -> int:
    return math.prod(len(SLOTS[slot]) for slot in re.findall(r"{(\w+)}", template))


def quotas(templates: list[str], count: int) -> dict[str, int]:
    """`count` sentences shared evenly over the templates, none asked for more than it can yield."""
    share = dict.fromkeys(templates, 0)
    remaining, open_ = count, hash_order(templates)
    while remaining and open_:
        each = max(1, remaining // len(open_))
        for template in list(open_):
            add = min(each, capacity(template) - share[template], remaining)
            share[template] += add
            remaining -= add
            if share[template] == capacity(template):
                open_.remove(template)
            if not remaining:
                break
    if remaining:
        raise ValueError(f"templates {templates} yield at most {count - remaining} sentences, {count} asked")
    return share


def fill_template(template: str, count: int, taken: set[str]) -> list[str]:
    """Up to `count` distinct sentences from `template`, none already in `taken` (which grows)."""
    rng = unit_rng(template)
    cores: list[str] = []
    for _ in range(count * 50):
        if len(cores) == count:
            break
        core = re.sub(r"{(\w+)}", lambda m: rng.choice(SLOTS[m.group(1)]), template)
        core = re.sub(r"\ba (?=[aeio]|u(?!se|ni))", "an ", re.sub(r"\s+", " ", core).strip())
        if core not in taken:
            taken.add(core)
            cores.append(core)
    return cores


def slots_of(template: str) -> set[str]:
    return set(re.findall(r"{(\w+)}", template))


def shape(template: str) -> list[str]:
    """The template's slots and words in order, punctuation dropped, contractions spelled out."""
    spelled = {short: full for full, short in CONTRACTIONS.items()}
    tokens = re.findall(r"{\w+}|[a-z0-9']+", template.lower())
    return " ".join(spelled.get(token, token) for token in tokens).split()


def inside(short: list[str], long: list[str]) -> bool:
    return any(long[i : i + len(short)] == short for i in range(len(long) - len(short) + 1))


def related(a: str, b: str) -> bool:
    """Templates whose sentences can be near copies of each other: one's shape inside the other's ("i will
    {hit_verb} {body_part}" in "next time i see you i will {hit_verb} {body_part}"), or the same slots with at
    most one word changed, in any order ("{warn}, {know_claim}" and "{know_claim}. {warn}")."""
    first, second = shape(a), shape(b)
    if inside(first, second) or inside(second, first):
        return True
    words_a = Counter(t for t in first if not t.startswith("{"))
    words_b = Counter(t for t in second if not t.startswith("{"))
    changed = max(sum((words_a - words_b).values()), sum((words_b - words_a).values()))
    return slots_of(a) == slots_of(b) and Counter(first) - words_a == Counter(second) - words_b and changed <= 1


def hold_out_templates(templates: list[str], slot_uses: Counter, every_template: list[str],
                       twinned: set[str]) -> set[str]:
    """Up to a quarter of the templates, in hash order: none whose sentences are, or could be, near copies of
    other units' sentences (`twinned`, found in the sentences themselves, and `related`, found in the
    templates' text); and none whose held-out use of a slot would leave that slot in no training template, so
    a held-out template is a new shape made of words seen in training (a word never seen at all is not
    something a classifier can learn from this corpus). `slot_uses` counts the templates still in training
    that use each slot, across categories, and is updated."""
    held_out: set[str] = set()
    for template in hash_order(templates):
        if len(held_out) == max(1, round(len(templates) * HELD_OUT)):
            break
        if template in twinned or any(related(template, other) for other in every_template if other != template):
            continue
        if all(slot_uses[slot] >= 2 for slot in slots_of(template)):
            held_out.add(template)
            slot_uses.subtract(slots_of(template))
    return held_out


def twin_keys(sentence: str) -> dict[str, set[tuple[str, ...]]]:
    """Look-up keys of a sentence's words: as they are, sorted, with each word blanked, with each word dropped,
    and every run of three words or more."""
    words = shape(sentence)
    return {
        "same": {tuple(words)},
        "sorted": {tuple(sorted(words))},
        "sub": {tuple(words[:i] + ["*"] + words[i + 1 :]) for i in range(len(words))},
        "drop": {tuple(words[:i] + words[i + 1 :]) for i in range(len(words))},
        "runs": {tuple(words[i:j]) for i in range(len(words)) for j in range(i + 3, len(words) + 1)},
    }


def twinned_units(sentences: dict[str, list[str]]) -> set[str]:
    """Units (templates or hand-written sentences) with a sentence that is another unit's sentence reordered,
    one word changed, inserted or dropped, or inside it / holding it (three words or more): what `related`
    finds in the templates' text, and what slot values make (a `dismiss` value equal to another template's
    words, a `kill_harm` verb where another template has a `harm` one)."""
    index: dict[tuple[str, tuple[str, ...]], set[str]] = {}
    keys = {unit: [twin_keys(s) for s in cores] for unit, cores in sentences.items()}
    for unit, unit_keys in keys.items():
        for k in unit_keys:
            for kind in ("same", "sorted", "sub", "drop", "runs"):
                for key in k[kind]:
                    index.setdefault((kind, key), set()).add(unit)
    twinned = set()
    for unit, unit_keys in keys.items():
        for k in unit_keys:
            others = set()
            for key in k["sorted"]:
                others |= index.get(("sorted", key), set())
            for key in k["sub"]:
                others |= index.get(("sub", key), set())
            for key in k["drop"]:  # this sentence one word longer than another's
                others |= index.get(("same", key), set())
            for key in k["same"]:  # one word shorter, or inside another
                others |= index.get(("drop", key), set()) | index.get(("runs", key), set())
            for key in k["runs"]:  # another inside this one
                others |= index.get(("same", key), set())
            if others - {unit}:
                twinned.add(unit)
                break
    return twinned


def compose_rows() -> list[dict]:
    """Every comment with its labels, split, category and the unit it was held out by (its template, or its
    hand-written sentence), in a fixed shuffled order."""
    rows = []
    slot_uses = Counter(slot for templates in TEMPLATES.values() for t in templates for slot in slots_of(t))
    every_template = [t for templates in TEMPLATES.values() for t in templates]
    taken = {core for cores, _ in CATEGORIES.values() for core in cores}
    filled: dict[str, list[str]] = {core: [core] for cores, _ in CATEGORIES.values() for core in cores}
    for name, _ in CATEGORIES.items():
        for template, count in quotas(TEMPLATES.get(name, []), TEMPLATED.get(name, 0)).items():
            cores = fill_template(template, count, taken)
            if len(cores) < count:
                raise ValueError(f"template {template!r} yields {len(cores)} new sentences, {count} asked")
            filled[template] = cores
    twinned = twinned_units(filled)
    for name, (hand_written, probabilities) in CATEGORIES.items():
        kind = "toxic" if probabilities["toxicity"] >= 0.5 else "benign"
        # Units are held out whole (a hand-written sentence, or every sentence of a template), and only units
        # with no sentence near another unit's (see `twinned_units` for what "near" covers and misses).
        untwinned = [core for core in hash_order(hand_written) if core not in twinned]
        held_out = set(untwinned[: max(1, round(len(hand_written) * HELD_OUT))])
        units = [(core, [core], HAND_WRITTEN_COPIES, core in held_out) for core in hand_written]
        templates = TEMPLATES.get(name, [])
        if templates:
            held_out = hold_out_templates(templates, slot_uses, every_template, twinned)
            units += [(t, filled[t], TEMPLATED_COPIES[kind], t in held_out) for t in templates]
        for unit, cores, copies, is_test in units:
            rng = unit_rng(unit)
            for core in cores:
                for _ in range(copies):
                    rows.append({"comment_text": compose(core, rng), **annotate(probabilities, rng),
                                 "split": "test" if is_test else "train", "category": name, "unit": unit,
                                 "core": core})
    random.Random(SEED).shuffle(rows)
    return rows


def main() -> None:
    rows = compose_rows()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "comment_text", *LABELS, "split"], extrasaction="ignore")
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({"id": i, **row})
    print(f"wrote {len(rows)} comments to {OUT}")


if __name__ == "__main__":
    main()
