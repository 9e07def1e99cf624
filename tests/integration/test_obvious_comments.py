"""Both demo models decide obvious comments as a new user expects, with the thresholds they ship.

The comments below were written for this check and are not in the demo corpus, not even with one word
changed (asserted; short everyday phrases such as "good morning" do occur inside longer corpus comments): a
benign one is right when no label is served, a toxic one when `toxicity` is. Greetings and thanks must all
pass.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from serving import load_classifier
from serving.config import Settings
from serving.service import InferenceService, RequestOptions
from tests.conftest import within_one_edit

CORPUS = Path(__file__).resolve().parents[2] / "model_artifacts" / "data" / "comments.csv"

GREETINGS_AND_THANKS = [
    "hello, world",
    "hi everyone",
    "Good morning!",
    "hey, how's your day going?",
    "Hello there, nice to meet you.",
    "thanks a ton for helping me out",
    "Thank you so much!",
    "thanks, that fixed it",
    "Much appreciated, have a great day.",
    "have a nice day",
]

BENIGN = GREETINGS_AND_THANKS + [
    "Happy birthday!",
    "good luck tomorrow",
    "What time does the store open?",
    "can anyone recommend a good book?",
    "Where can I download the update?",
    "The pharmacy closes early on holidays.",
    "the team announced a new coach today",
    "it will rain this afternoon",
    "the battery lasts all day",
    "This phone takes great photos.",
    "Interesting argument, though I'm not convinced.",
    "I'm not sure that is right, could you share a source?",
    "I made pancakes for breakfast",
    "the sunset was beautiful tonight",
    "looking forward to the weekend",
    "the new search feature is a killer",
    "I hate Mondays",
    "that concert was sick",
    "we crushed the other team 5-0",
    "congratulations on the new job",
]

TOXIC = [
    "you absolute idiot",
    "shut your stupid face, moron",
    "what a pathetic excuse for a human",
    "you are the dumbest person I have ever met",
    "everyone here hates you, worthless clown",
    "go away, idiot",
    "you're so stupid it hurts",
    "you have the brain of a goldfish",
    "you're a filthy pig",
    "anyone who believes this is a moron",
    "you're dead meat, I swear",
    "I'm going to find you and hurt you",
    "watch your back, I know where you live",
    "I'll snap your neck",
    "go kill yourself",
    "drop dead, loser",
    "this is f***ing bullshit",
    "what the hell is wrong with you, dumbass",
    "nobody wants your crap here, get out",
    "immigrants should all be deported, they're vermin",
    "women are too stupid to vote",
    "being gay is disgusting and unnatural",
    "send me nudes",
    "she is a slut",
    "your opinion is garbage and so are you",
]

# Issue 15's target is 95% (53 of 55). Each model is held below what the shipped build reaches, to the least
# that other training seeds reach (model_artifacts/README.md): a rebuild on another machine can flip a borderline
# score as another seed does, which should not fail CI, while a real regression does.
REQUIRED_RIGHT = {"roberta": 53, "rnn": 52}


CONTRACTIONS = {"you're": "you are", "i'm": "i am", "don't": "do not", "it's": "it is", "can't": "cannot",
                "they're": "they are", "we're": "we are", "isn't": "is not", "i'll": "i will", "how's": "how is",
                "what's": "what is", "that's": "that is"}


def words(text: str) -> list[str]:
    """Lowercase words, contractions spelled out (the corpus contracts some sentences and not others)."""
    found = re.findall(r"[a-z0-9']+", text.lower().replace("*", ""))
    return " ".join(CONTRACTIONS.get(word, word) for word in found).split()


def near_copies(sentence: str, corpus: list[list[str]]) -> list[str]:
    """Corpus comments holding `sentence`: as a whole comment (give or take one word), or, for 4 words or more,
    as a run of words inside one with one word substituted, inserted or dropped. Shorter sentences ("good
    morning", "go kill yourself") are everyday phrases that any corpus holds inside longer comments; whole,
    they must not be there."""
    target = words(sentence)
    found = []
    for comment in corpus:
        if comment == target or (len(target) >= 4 and within_one_edit(comment, target)):
            found.append(" ".join(comment))
        elif len(target) >= 4:
            for width in (len(target) - 1, len(target), len(target) + 1):
                if any(within_one_edit(comment[start : start + width], target)
                       for start in range(len(comment) - width + 1)):
                    found.append(" ".join(comment))
                    break
    return found


def test_the_near_copy_check_sees_substitutions_insertions_drops_and_contractions():
    corpus = [words("Lol what a fool you're, honestly"), words("hi folks")]
    assert near_copies("what a complete fool you are", corpus)  # one word inserted, a contraction
    assert not near_copies("what an utter fool you are", corpus)  # two words changed: a different sentence
    assert not near_copies("what a kind and thoughtful person you are", corpus)
    assert near_copies("hi folks", corpus) and not near_copies("hi everyone", corpus)


def test_the_sanity_set_is_not_in_the_corpus():
    with CORPUS.open(newline="", encoding="utf-8") as f:
        corpus = [words(row["comment_text"]) for row in csv.DictReader(f)]
    assert len(BENIGN) + len(TOXIC) >= 40
    leaked = {text: near_copies(text, corpus)[:3] for text in BENIGN + TOXIC if near_copies(text, corpus)}
    assert not leaked


@pytest.fixture(scope="module", params=["roberta", "rnn"])
def served(request, demo_dir):
    """The demo model as the server runs it: its backend, its thresholds.json."""
    folder = demo_dir / request.param
    assert (folder / "thresholds.json").is_file(), "the demo build writes thresholds picked on the held-out split"
    service = InferenceService(load_classifier(folder), Settings(), folder)
    yield request.param, service
    service.stop(5)


def served_labels(service: InferenceService, texts: list[str]) -> list[list[str]]:
    return [result["labels"] for result in service.classify(texts, RequestOptions()).results]


def test_obvious_comments_are_decided_right(served):
    family, service = served
    benign = served_labels(service, BENIGN)
    toxic = served_labels(service, TOXIC)
    flagged = [(text, labels) for text, labels in zip(BENIGN, benign, strict=True) if labels]
    missed = [text for text, labels in zip(TOXIC, toxic, strict=True) if "toxicity" not in labels]
    right = len(BENIGN) - len(flagged) + len(TOXIC) - len(missed)
    print(f"{family}: {right}/{len(BENIGN) + len(TOXIC)} right; flagged {flagged}; missed {missed}")
    assert right >= REQUIRED_RIGHT[family], f"{family}: {right} right; benign flagged {flagged}; toxic missed {missed}"
    greetings = benign[: len(GREETINGS_AND_THANKS)]  # BENIGN starts with them
    greeted = [(text, labels) for text, labels in zip(GREETINGS_AND_THANKS, greetings, strict=True) if labels]
    assert not greeted, f"{family} flags greetings or thanks: {greeted}"
