"""Writes data/comments.csv: the demo corpus in the Jigsaw Unintended Bias CSV layout.

Core sentences come from sentences.py (written by hand for this repo): its lists, and its templates filled
from hand-written slot values. Comments are composed from them with a seeded RNG: an optional lead, one core
sentence that carries the labels, an optional tail, and typos for a share of them. Labels are fractions of
10 simulated annotators, each voting with the core's probability plus noise, as in Jigsaw; positive means
>= 0.5. The split holds out hand-written sentences one by one and templated ones by template, so held-out
comments mostly say things no training comment said (templates that share a shape can still leave a test
sentence one word from a training one). Re-run only to change the corpus:

    python model_artifacts/make_corpus.py
"""

from __future__ import annotations

import csv
import random
import re
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
                "they are": "they're", "we are": "we're", "is not": "isn't", "i will": "i'll"}


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


def fill_templates(templates: list[str], count: int, taken: set[str], rng: random.Random) -> list[tuple[str, str]]:
    """`count` distinct (sentence, its template) from the templates, no sentence already in `taken`."""
    cores: list[tuple[str, str]] = []
    for _ in range(count * 50):
        if len(cores) == count:
            break
        template = rng.choice(templates)
        core = re.sub(r"{(\w+)}", lambda m: rng.choice(SLOTS[m.group(1)]), template)
        core = re.sub(r"\ba (?=[aeiou])", "an ", re.sub(r"\s+", " ", core).strip())
        if core not in taken:
            taken.add(core)
            cores.append((core, template))
    if len(cores) < count:
        raise ValueError(f"templates {templates} yield only {len(cores)} distinct sentences, {count} asked")
    return cores


def main() -> None:
    rng = random.Random(20221128)
    rows = []
    taken = {core for cores, _ in CATEGORIES.values() for core in cores}
    for name, (hand_written, probabilities) in CATEGORIES.items():
        templates = TEMPLATES.get(name, [])
        templated = fill_templates(templates, TEMPLATED[name], taken, rng) if templates else []
        kind = "toxic" if probabilities["toxicity"] >= 0.5 else "benign"
        # Hand-written sentences are held out one by one; templated ones by template, so a test sentence is
        # never a training sentence with one slot filled differently.
        units = [(hand_written, [(core, core) for core in hand_written], HAND_WRITTEN_COPIES),
                 (templates, templated, TEMPLATED_COPIES[kind])]
        for keys, cores, copies in units:
            shuffled = keys[:]
            rng.shuffle(shuffled)
            held_out = set(shuffled[: max(1, round(len(keys) * HELD_OUT))]) if keys else set()
            for core, key in cores:
                split = "test" if key in held_out else "train"
                for _ in range(copies):
                    rows.append({"comment_text": compose(core, rng), **annotate(probabilities, rng), "split": split})
    rng.shuffle(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "comment_text", *LABELS, "split"])
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({"id": i, **row})
    print(f"wrote {len(rows)} comments to {OUT}")


if __name__ == "__main__":
    main()
