"""Reduced precision only where it survives: fp16 scores checked against fp32 on the same device at start-up.

A model that does not keep its scores in fp16 (an overflow in a layer norm, a head sensitive to rounding) is
never served in fp16: the check runs before the worker takes traffic, and its verdict is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from serving.classifier import Classifier
from serving.engine.device import fatal_device_error
from serving.errors import ModelLoadError

log = logging.getLogger(__name__)

HALF_MAX_ABS_DIFF = 0.02
HALF_MIN_DECISIONS_AGREE = 0.995
# Varied texts the check scores on every model: short and long, benign and hostile, odd spellings.
CHECK_TEXTS = (
    "hello, world", "thanks for the quick reply", "have a nice day", "what time does the game start?",
    "I disagree with your point, but I see where you are coming from", "the council meets on tuesday at 7pm",
    "this phone has a killer feature", "I hate mondays", "that concert was sick!", "great write up, thanks",
    "you are an idiot", "shut up, you stupid clown", "I will find where you live", "go back to where you came from",
    "what a pathetic loser", "nobody wants you here, get lost", "this is the dumbest thing I have ever read",
    "you people are all the same", "I am going to hurt you", "what the hell is wrong with you",
    "Congrats on the new job!!!", "lol ur so dumb", "k", "Merci beaucoup, très gentil",
    "can someone explain how the tax credit works for freelancers who moved states halfway through the year?",
    " ".join(["the report covers revenue, staffing and the new office plans for next year"] * 12),
    " ".join(["you are a worthless idiot and everyone here knows it"] * 12),
    "idiot " * 40, "RT @someone: check this out http://example.com/a?b=c #news", "1234567890 !!! ???",
    "the quick brown fox jumps over the lazy dog", "please stop spamming this thread",
    "I'm sorry for your loss", "your argument makes no sense at all", "kill the process and restart the server",
    "this movie was a bomb", "you're a genius, honestly", "screw this, I quit", "get a life", "bless you",
)


@dataclass(frozen=True)
class Agreement:
    max_abs_diff: float
    decisions_agree: float

    def within(self, max_abs_diff: float | None, min_decisions_agree: float) -> bool:
        return self.decisions_agree >= min_decisions_agree and (max_abs_diff is None
                                                                or self.max_abs_diff <= max_abs_diff)

    def __str__(self) -> str:
        return f"max |score diff| {self.max_abs_diff:.2e}, decisions agree {self.decisions_agree:.2%}"


def agreement(expected: np.ndarray, got: np.ndarray, threshold: float = 0.5) -> Agreement:
    """How close two models' scores on the same texts are: the largest difference and the share of per-label
    decisions at `threshold` that agree."""
    return Agreement(float(np.abs(expected - got).max()),
                     float(((expected >= threshold) == (got >= threshold)).mean()))


def choose_half_or_full(load: Callable[[str], Classifier], half: str, full: str, what: str,
                        texts: Sequence[str] = CHECK_TEXTS) -> Classifier:
    """`load(half)` when its scores on `texts` agree with `load(full)`'s on the same device, else `load(full)`;
    the verdict is logged either way."""
    try:
        reference = load(full)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{what}: {half} is served only once its scores are checked against {full}, "
                             f"which could not be loaded ({exc})") from exc
    expected = reference.predict(texts)
    failure, candidate = None, None
    try:
        candidate = load(half)
        scores = candidate.predict(texts)
    except Exception as exc:
        if fatal_device_error(exc) is not None:  # the context is gone: fp32 would fail as well
            raise
        failure = f"{type(exc).__name__}: {exc}"
    if failure is not None or candidate is None:  # outside the handler: no traceback holds the candidate's tensors
        candidate = None
        log.warning("%s: serving %s; %s failed (%s)", what, full, half, failure)
        _release_cached_memory()
        return reference
    found = agreement(expected, scores)
    if found.within(HALF_MAX_ABS_DIFF, HALF_MIN_DECISIONS_AGREE):
        log.info("%s: serving %s; on %d check texts against %s: %s", what, half, len(texts), full, found)
        del reference
        _release_cached_memory()
        return candidate
    log.warning("%s: serving %s; %s missed the tolerance (max diff %s, decisions >= %.1f%%) on %d check texts: %s",
                what, full, half, HALF_MAX_ABS_DIFF, HALF_MIN_DECISIONS_AGREE * 100, len(texts), found)
    del candidate
    _release_cached_memory()
    return reference


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
