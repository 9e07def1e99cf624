"""Dynamic batching: one queue and one loop per worker; submit(texts) -> future of their scores.

Request threads tokenise and submit; the loop takes what is waiting as soon as the device is
free, groups texts of similar length around the oldest one (bounded by a text count and a
padded-token budget), runs the batch, and settles every future it accepted, whatever happens.
With `run_inline_when_idle`, a request that finds the model idle and nothing queued runs as its
own batch in its own thread, sparing two thread wake-ups (~0.3 ms on a 2-core VM); the model
still runs one batch at a time, and whatever arrives meanwhile queues for the loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import numpy as np

from serving.channel import BatchedResult
from serving.classifier import EncodedText
from serving.errors import NotReady, QueueFull, RequestTimeout

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one forward pass held; passed to the `on_batch` hook (metrics)."""

    size: int
    padded_tokens: int
    real_tokens: int
    compute_s: float


class Delivery:
    """A request's outcome handed once to `deliver(result, error)` on the thread that settles it: how the engine
    takes its requests' answers (it hands them to its I/O thread). A concurrent.futures.Future would take its lock
    some eight times per request and build a condition variable for a waiter that never comes."""

    __slots__ = ("deliver", "_once")

    def __init__(self, deliver: Callable[[BatchedResult | None, BaseException | None], None]) -> None:
        self.deliver = deliver
        self._once = threading.Lock()  # taken by the first settlement: a request's texts may settle on two threads

    def done(self) -> bool:
        return self._once.locked()

    def set_result(self, result: BatchedResult | None) -> None:
        self._settle(result, None)

    def set_exception(self, error: BaseException) -> None:
        self._settle(None, error)

    def _settle(self, result: BatchedResult | None, error: BaseException | None) -> None:
        if not self._once.acquire(blocking=False):
            return
        try:
            self.deliver(result, error)
        except Exception:  # the batcher settles the batch's other requests all the same
            log.exception("delivering a request's outcome failed")


@dataclass(eq=False)
class _Request:
    future: Future | Delivery
    scores: np.ndarray
    remaining: int
    deadline: float
    queue_s: float = 0.0
    compute_s: float = 0.0

    @property
    def abandoned(self) -> bool:
        return self.future.done() or time.monotonic() > self.deadline


@dataclass(eq=False, slots=True)
class _Item:
    encoded: EncodedText
    request: _Request
    index: int
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def cost_length(self) -> int:
        return max(1, self.encoded.length)


def select_batch(lengths: Sequence[int], max_size: int, max_tokens: int, max_padding: float = 1.0,
                 padding_per_text: float = float("inf")) -> list[int]:
    """Indices of a batch around item 0 (the oldest), adding the nearest lengths first while the count, the
    padded tokens, the padding share (padded - real) / padded, and the padding tokens per text beyond the
    first (`padding_per_text`: the break-even point, see PaddingRule) stay within bounds."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    low = high = order.index(0)
    longest, real = lengths[0], lengths[0]

    def fits(new_longest: int, new_real: int, count: int) -> bool:
        padded = new_longest * count
        padding = padded - new_real
        return padded <= max_tokens and padding <= max_padding * padded and padding <= padding_per_text * (count - 1)

    while high - low + 1 < max_size:
        count = high - low + 2
        right = order[high + 1] if high + 1 < len(order) else None
        left = order[low - 1] if low > 0 else None
        right_fits = right is not None and fits(max(longest, lengths[right]), real + lengths[right], count)
        left_fits = left is not None and fits(longest, real + lengths[left], count)
        prefer_right = right_fits and (
            not left_fits or lengths[right] - lengths[0] <= lengths[0] - lengths[left]  # type: ignore[index]
        )
        if prefer_right:
            high += 1
            longest = max(longest, lengths[right])  # type: ignore[index]
            real += lengths[right]  # type: ignore[index]
        elif left_fits:
            low -= 1
            real += lengths[left]  # type: ignore[index]
        else:
            break
    return order[low : high + 1]


@dataclass(frozen=True)
class PaddingRule:
    """How much padding a batch may carry: a cap on its share of the padded tokens, and the padding tokens each
    text beyond the first may bring.

    Auto (max_batch_padding -1) on CPU, where a forward costs about `fixed + per_token x padded tokens` (fitted
    to the warm-up timings): one more text in a batch saves a `fixed` and costs `per_token` for each padding
    token it adds, so it is worth taking while that padding stays under fixed / per_token tokens per text.
    Models whose forward is mostly fixed cost (tiny ones, the LSTM) then batch freely, and big ones only
    near-equal lengths. On GPUs, where padding rides along almost free, no bound.
    """

    share: float = 1.0
    per_text: float = math.inf

    @classmethod
    def choose(cls, setting: float, device: str, seconds_by_length: dict[int, float] | None = None) -> PaddingRule:
        if setting >= 0:
            return cls(share=setting)
        if device != "cpu":
            return cls()
        if not seconds_by_length or len(seconds_by_length) < 2:
            return cls(share=0.2)  # until warm-up has timed the model
        lengths = np.array(list(seconds_by_length), dtype=float)
        per_token, fixed = np.polyfit(lengths, np.array(list(seconds_by_length.values())), 1)
        if per_token <= 0:
            return cls()
        return cls(per_text=round(float(max(fixed, 0.0) / per_token), 1))


class Batcher:
    """Owns the queue and the inference loop; `run_batch` maps encoded texts to a (n, labels) array."""

    def __init__(
        self,
        run_batch: Callable[[list[EncodedText]], np.ndarray],
        num_labels: int,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_batch_delay_ms: float = 0.0,
        padding: PaddingRule = PaddingRule(),
        max_queue_texts: int = 2048,
        run_inline_when_idle: bool = False,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.num_labels = num_labels
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_delay_s = max_batch_delay_ms / 1000.0
        self.padding = padding  # replaced once warm-up has timed the model
        self.max_queue_texts = max_queue_texts
        self.run_inline_when_idle = run_inline_when_idle and not max_batch_delay_ms  # a delay means: wait for company
        self.on_batch = on_batch
        self._waiting: list[_Item] = []
        self._busy = False  # a batch is running, in the loop or inline
        self._cond = threading.Condition()
        self._stopping = False
        self._failure: Exception | None = None  # set by fail(): what every later submit raises
        self._thread = threading.Thread(target=self._loop, name="inference-loop", daemon=True)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def queued_texts(self) -> int:
        return len(self._waiting)

    def admit(self, texts: int) -> None:
        """Before tokenising: 429 when a request of `texts` (one the service sends whole, at most half the queue)
        would find the queue full now; the check at submit stays the authority."""
        if texts <= self.max_queue_texts // 2 and len(self._waiting) + texts > self.max_queue_texts:
            raise QueueFull(f"queue is full ({len(self._waiting)} texts waiting, limit {self.max_queue_texts}); "
                            "retry later")

    def submit(self, encoded: Sequence[EncodedText], timeout_s: float, wait_for_room: bool = False,
               room: int | None = None, inline: bool = True) -> Future:
        """Queue a request's texts; the future yields a BatchedResult or the error that stopped it. With
        `inline` False the texts never run in the calling thread (a caller that has more requests to hand over).

        A full queue answers QueueFull, or with `wait_for_room` (the parts of a request larger than the queue's
        share one request may hold) waits until the queue holds at most `room` texts with these, until the
        deadline, then RequestTimeout."""
        future: Future = Future()
        self._submit(future, encoded, timeout_s, wait_for_room, room, inline)
        return future

    def submit_calling(self, deliver: Callable[[BatchedResult | None, BaseException | None], None],
                       encoded: Sequence[EncodedText], timeout_s: float, wait_for_room: bool = False,
                       room: int | None = None, inline: bool = True) -> None:
        """submit(), with the outcome handed to `deliver(result, error)` on the thread that settles it (this one
        when the texts run inline) instead of a future. What submit() raises is raised here too."""
        self._submit(Delivery(deliver), encoded, timeout_s, wait_for_room, room, inline)

    def _submit(self, future: Future | Delivery, encoded: Sequence[EncodedText], timeout_s: float,
                wait_for_room: bool, room: int | None, inline: bool) -> None:
        if timeout_s <= 0:  # spent before queueing (reading, tokenising): never worth a forward
            raise RequestTimeout("request timed out before it reached the model")
        if not encoded:
            future.set_result(BatchedResult(np.zeros((0, self.num_labels), np.float32), 0.0, 0.0))
            return
        request = _Request(future, np.zeros((len(encoded), self.num_labels), np.float32), len(encoded),
                           time.monotonic() + timeout_s)
        with self._cond:
            if self._failure is not None:
                raise self._failure
            if self._stopping or not self._thread.is_alive():
                raise NotReady("the server is shutting down")
            limit = room if room is not None else self.max_queue_texts
            if wait_for_room and not self._cond.wait_for(
                    lambda: self._failure is not None or self._stopping
                    or len(self._waiting) + len(encoded) <= limit, timeout_s):
                raise RequestTimeout("request timed out waiting for room in the queue")
            if self._failure is not None:
                raise self._failure
            if self._stopping:  # stopped while this part waited for room
                raise NotReady("the server is shutting down")
            if len(self._waiting) + len(encoded) > self.max_queue_texts:
                raise QueueFull(
                    f"queue is full ({len(self._waiting)} texts waiting, limit {self.max_queue_texts}); retry later"
                )
            items = [_Item(e, request, i) for i, e in enumerate(encoded)]
            inline = (inline and self.run_inline_when_idle and not self._busy and not self._waiting
                      and self._one_batch(items))
            if inline:
                self._busy = True
            else:
                self._waiting.extend(items)
                self._cond.notify()
        if inline:
            try:
                self._run(items)
            finally:
                self._idle()

    def _one_batch(self, items: list[_Item]) -> bool:
        lengths = [item.cost_length for item in items]
        picked = select_batch(lengths, self.max_batch_size, self.max_batch_tokens, self.padding.share,
                              self.padding.per_text)
        return len(picked) == len(items)

    def _idle(self) -> None:
        with self._cond:
            self._busy = False
            if self._waiting or self._stopping:  # else the loop has nothing to do: waking it costs a thread switch
                self._cond.notify_all()

    def stop(self, timeout_s: float = 25.0) -> bool:
        """Refuse new texts, finish the queued ones, and end the loop; False if it did not end in time."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def fail(self, error: Exception) -> None:
        """Give up for good (the device is lost): settle every queued text's request with `error`, raise it
        on every later submit, and end the loop. A batch already running settles its own requests."""
        with self._cond:
            self._failure = error
            self._stopping = True
            waiting, self._waiting = self._waiting, []
            self._cond.notify_all()
        for item in waiting:
            _settle(item.request.future, error=error)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: (self._waiting or self._stopping) and not self._busy)
                if not self._waiting:
                    return
                if self.max_batch_delay_s and len(self._waiting) < self.max_batch_size and not self._stopping:
                    self._cond.wait_for(lambda: len(self._waiting) >= self.max_batch_size, self.max_batch_delay_s)
                batch = self._take_batch()
                self._busy = bool(batch)
                if batch:
                    self._cond.notify_all()  # room in the queue for a request waiting to add its next part
            if batch:
                try:
                    self._run(batch)
                finally:
                    self._idle()

    def _take_batch(self) -> list[_Item]:
        """Drop texts of abandoned requests, then remove and return the next batch (lock held)."""
        for item in self._waiting:
            if item.request.abandoned:
                _settle(item.request.future, error=RequestTimeout("request timed out while queued"))
        self._waiting = [item for item in self._waiting if not item.request.future.done()]
        if not self._waiting:
            return []
        picked = select_batch([i.cost_length for i in self._waiting], self.max_batch_size, self.max_batch_tokens,
                              self.padding.share, self.padding.per_text)
        chosen = set(picked)
        batch = [self._waiting[i] for i in sorted(picked)]
        self._waiting = [item for i, item in enumerate(self._waiting) if i not in chosen]
        return batch

    def _run(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        try:
            scores = self.run_batch([item.encoded for item in batch])
            if len(scores) != len(batch):
                raise RuntimeError(f"model returned {len(scores)} rows for a batch of {len(batch)}")
        except BaseException as exc:  # every accepted future is settled, and the loop lives on
            log.exception("batch of %d texts failed", len(batch))
            for item in batch:
                _settle(item.request.future, error=exc)
            return
        compute_s = time.monotonic() - started
        self._report(batch, compute_s)
        for item, row in zip(batch, scores, strict=True):
            request = item.request
            request.scores[item.index] = row
            request.queue_s = max(request.queue_s, started - item.enqueued_at)
            request.compute_s = max(request.compute_s, compute_s)
            request.remaining -= 1
            if request.remaining == 0:
                _settle(request.future, BatchedResult(request.scores, request.queue_s, request.compute_s))

    def _report(self, batch: list[_Item], compute_s: float) -> None:
        if self.on_batch is None:
            return
        lengths = [item.cost_length for item in batch]
        try:
            self.on_batch(BatchStats(len(batch), max(lengths) * len(batch), sum(lengths), compute_s))
        except Exception:
            log.exception("on_batch hook failed")


def _settle(future: Future | Delivery, result: BatchedResult | None = None, error: BaseException | None = None) -> None:
    """Settle a request's future or delivery once; a future's waiter may have given up (cancelled it) meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
