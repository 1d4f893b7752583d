"""What happens to one request, top to bottom: the consumer's steps for each message.

1. too late?    the consumer stops, or the request's visibility ran out while it was held:
                hand it back untouched
2. parse        not a widget request: REJECTED, without calling the maker
3. rate slot    wait for a --max-rate slot (the heartbeat keeps it invisible meanwhile)
4. breaker      the maker is down as a whole: hand it back untouched
5. maker call   POST it, however long that takes (the heartbeat keeps it invisible)
6. classify     OK or REJECTED: the maker is up. RETRY: the request's fault, or the maker's?
7. give up?     a request failing on its own at its last delivery: FAILED, dead-letter copy
8. retry delay  otherwise it is retried after the retry delay (or the maker's Retry-After);
                an outage's failures are never counted against the request
9. settle       respond and delete (through the outbox), or change its visibility; report

On a FIFO queue (the dispatcher keeps each group in order) two things differ. A request handed
back unstarted, or retried because the maker was down, did not fail on its own, yet SQS counts
the delivery: those deliveries are noted here and not counted against it (by this consumer;
another one only sees SQS's count). And a request near SQS's redrive limit is not sent afresh,
which would put it at the end of its group, behind requests sent after it: it is given up as
FAILED instead, with its response and dead-letter copy, rather than left to SQS's silent move.
The larger FIFO redrive margin (widgets/sqs.py) makes that rare.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from widgets.consumer.breaker import HALF_OPEN, Breaker
from widgets.consumer.heartbeat import Heartbeat
from widgets.consumer.maker_client import Call, MakerAnswer, MakerClient
from widgets.consumer.outbox import Outbox
from widgets.consumer.rate_limit import RateLimiter
from widgets.logs import printable
from widgets.messages import (
    FAILED,
    MAX_REASON_CHARS,
    OK,
    ORIGINAL_MESSAGE_ID,
    REJECTED,
    RETRY,
    InvalidRequest,
    Received,
)
from widgets.sqs import (
    MAX_VISIBILITY,
    redrive_margin,
)

log = logging.getLogger(__name__)

# Not an outcome of the request: the consumer let it go untouched, for SQS to deliver again.
HANDED_BACK = "HANDED_BACK"
# SQS allows at most ten message attributes; the dead-letter copy adds three of its own
# (replacing those of an earlier failure, for a request that was redriven and failed again).
DEAD_LETTER_ATTRIBUTES = ("FailureReason", "ReceiveCount", ORIGINAL_MESSAGE_ID)
MAX_COPIED_ATTRIBUTES = 10 - len(DEAD_LETTER_ATTRIBUTES)
# SendMessage's longest DelaySeconds, for a fresh copy that should wait out a retry delay.
MAX_DELAY_SECONDS = 900
# The outcomes that settle a request: it is answered and deleted, never delivered again.
TERMINAL = frozenset((OK, REJECTED, FAILED))
# How many FIFO requests' uncounted deliveries are remembered (the oldest are forgotten first).
MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery of a request: a status, why, the target's answer, the delay for RETRY."""

    status: str
    widget_id: str | None = None  # the request's subject (its widget id), when its adapter names one
    reason: str | None = None
    widget: dict[str, Any] | None = None  # a 2xx answer's JSON object (the widget)
    delay: int = 0
    answer: MakerAnswer | None = None  # the target's answer, when the call got one


class Adapter(Protocol):
    """What a face of the relay decides: the call a message makes, and the report of its outcome."""

    subject_field: str | None  # the log field naming a request's subject ("widget_id"), or None

    def request(self, message: Received) -> Call:
        """Return the call a message makes; raise InvalidRequest if it can never make one."""

    def report(self, message: Received, outcome: Outcome) -> str:
        """Return the outcome report of a settled request (the response queue's message body)."""


@dataclass(frozen=True)
class RetryPolicy:
    """When a failing request is retried, and when it is given up.

    backoff: fixed (retry_delay each time), exponential (doubling from it), or jitter (exponential
    with full jitter: drawn between 0 and the doubling bound, so requests failing together do not
    come back together); delays, when given, is the schedule instead: the nth failed delivery
    waits delays[n - 1] (the last one from then on).
    """

    max_receives: int = 3
    retry_delay: int = 30
    backoff: str = "fixed"
    fifo: bool = False
    delays: tuple[int, ...] = ()

    def delay(self, receive_count: int, rng: random.Random | None = None) -> int:
        """Return the seconds to wait before the next delivery after the given failed delivery."""
        failed = max(receive_count, 1)
        if self.delays:
            return min(self.delays[min(failed, len(self.delays)) - 1], MAX_VISIBILITY)
        delay = self.retry_delay
        if self.backoff in ("exponential", "jitter"):
            delay = min(self.retry_delay * 2 ** min(failed - 1, 20), MAX_VISIBILITY)
        if self.backoff == "jitter":
            delay = round((rng or random).uniform(0, delay))
        return min(delay, MAX_VISIBILITY)

    @property
    def redrive_limit(self) -> int:
        """Return the maxReceiveCount of the request queue's redrive policy."""
        return self.max_receives + redrive_margin(self.fifo)

    @property
    def requeue_at(self) -> int:
        """Return the receive count from which a request handed back is sent afresh (FIFO: given up)."""
        return self.redrive_limit - 1


def dead_letter_attributes(message: Received, reason: str) -> dict[str, Any]:
    """Return the message attributes of a request's dead-letter copy: its own plus why it failed."""
    own = {k: v for k, v in message.attributes.items() if k not in DEAD_LETTER_ATTRIBUTES}
    attributes = dict(list(own.items())[:MAX_COPIED_ATTRIBUTES])
    attributes["FailureReason"] = {"DataType": "String", "StringValue": reason[:MAX_REASON_CHARS]}
    attributes["ReceiveCount"] = {"DataType": "Number", "StringValue": str(message.receive_count)}
    attributes[ORIGINAL_MESSAGE_ID] = {"DataType": "String", "StringValue": message.request_id}
    return attributes


def fresh_copy_attributes(message: Received) -> dict[str, Any]:
    """Return the message attributes of a request sent afresh: its own, and the id it was first sent with."""
    attributes = {k: v for k, v in message.attributes.items() if k != ORIGINAL_MESSAGE_ID}
    attributes = dict(list(attributes.items())[:9])
    attributes[ORIGINAL_MESSAGE_ID] = {"DataType": "String", "StringValue": message.request_id}
    return attributes


class Handler:
    """Takes one request through the steps above; the dispatcher's workers call it."""

    def __init__(
        self,
        *,
        outbox: Outbox,
        maker: MakerClient,
        adapter: Adapter,
        breaker: Breaker,
        heartbeat: Heartbeat,
        limiter: RateLimiter,
        policy: RetryPolicy,
        stopping: threading.Event,
    ) -> None:
        """Wire the handler to the mechanisms it uses."""
        self.outbox = outbox
        self.maker = maker
        self.adapter = adapter
        self.breaker = breaker
        self.heartbeat = heartbeat
        self.limiter = limiter
        self.policy = policy
        self.stopping = stopping
        self.fifo = policy.fifo
        self.counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        # FIFO only: message id -> deliveries that were not the request's own failure.
        self._uncounted: OrderedDict[str, int] = OrderedDict()
        self._uncounted_lock = threading.Lock()

    def __call__(self, message: Received) -> bool:
        """Handle a message; return True if it was settled, False if SQS will deliver it again.

        An error of ours leaves it for SQS to deliver again. The heartbeat covers it until SQS
        confirms it settled (the outbox tells), or until it is retried or handed back.
        """
        try:
            return self.handle(message).status in TERMINAL
        except Exception as error:
            # A bug of ours: the message comes back after its visibility timeout, until its
            # last delivery, where it is given up as FAILED so it is not dropped silently.
            log.exception("handler_error message_id=%s", message.message_id)
            if message.receive_count >= self.policy.max_receives:
                return self._give_up(message, error)
            self.heartbeat.forget(message)
        return False

    def handle(self, message: Received) -> Outcome:
        """Take one message through the steps, top to bottom; return its outcome."""
        started = time.monotonic()
        if self.stopping.is_set():
            return self.hand_back(message, "the consumer is stopping")
        if self.heartbeat.running_out(message):
            return self.hand_back(message, "its visibility timeout is nearly over")
        try:
            call = self.adapter.request(message)
        except InvalidRequest as exc:
            return self.settle(message, Outcome(REJECTED, None, str(exc)), started)
        if not self.limiter.wait(self.stopping):
            return self.hand_back(message, "the consumer is stopping")
        admitted = self.breaker.admit()
        if admitted is None:
            return self.hand_back(message, f"the {self.maker.name} is down")
        answer = self.maker.send(call)
        outcome = self.classify(message, call.subject, answer, trial=admitted == HALF_OPEN)
        return self.settle(message, outcome, started)

    def classify(
        self, message: Received, widget_id: str | None, answer: MakerAnswer, trial: bool = False
    ) -> Outcome:
        """Turn the maker's answer into an outcome, telling the request's failures from the maker's."""
        if answer.status != RETRY:
            self.breaker.succeeded()
            return Outcome(answer.status, widget_id, answer.reason, answer.widget, answer=answer)
        reason = answer.reason or "maker failed"
        if self.breaker.failed(message.request_id, answer.failure, reason, answer.retry_after, trial):
            # The maker is down as a whole: not this request's failure. It comes back when the
            # breaker next lets requests through (or when the maker said to retry).
            wait = answer.retry_after if answer.retry_after is not None else self.breaker.until_probe()
            self._not_counted(message)
            reason = f"{reason}; {self.maker.name} down, not counted"
            return Outcome(RETRY, widget_id, reason, delay=math.ceil(wait))
        if self.attempts(message) >= self.policy.max_receives:
            reason = f"{reason}; gave up after {message.receive_count} receives"
            return Outcome(FAILED, widget_id, reason, answer=answer)
        if answer.retry_after is not None:
            return Outcome(RETRY, widget_id, reason, delay=math.ceil(answer.retry_after))
        return Outcome(RETRY, widget_id, reason, delay=self.policy.delay(message.receive_count))

    def attempts(self, message: Received) -> int:
        """Return how many deliveries of a message count against it: all on a standard queue."""
        if not self.fifo:
            return message.receive_count
        with self._uncounted_lock:
            return message.receive_count - self._uncounted.get(message.message_id, 0)

    def _not_counted(self, message: Received) -> None:
        """Note, on a FIFO queue, a delivery of a message that was not its own failure."""
        if not self.fifo:
            return
        with self._uncounted_lock:
            self._uncounted[message.message_id] = self._uncounted.pop(message.message_id, 0) + 1
            if len(self._uncounted) > MAX_REMEMBERED:
                self._uncounted.popitem(last=False)

    def out_of_deliveries(self, message: Received) -> bool:
        """Tell whether a FIFO request is too near SQS's redrive limit to go back to the queue."""
        return self.fifo and message.receive_count >= self.policy.requeue_at

    def settle(self, message: Received, outcome: Outcome, started: float) -> Outcome:
        """Act on an outcome: retry later, or respond and delete (after a dead-letter copy); report it."""
        if outcome.status == RETRY and self.out_of_deliveries(message):
            outcome = Outcome(FAILED, outcome.widget_id, f"{outcome.reason}; {self._limit_reason(message)}")
        if outcome.status == RETRY:
            self.retry_later(message, outcome.delay)
        else:
            if self.fifo:
                with self._uncounted_lock:
                    self._uncounted.pop(message.message_id, None)
            body = self.adapter.report(message, outcome) if self.outbox.urls.response else None
            # A FAILED request's dead-letter copy is kept before it is deleted.
            dead_letter = (
                dead_letter_attributes(message, outcome.reason or "") if outcome.status == FAILED else None
            )
            self.outbox.respond_and_delete(
                message, body, dead_letter=dead_letter, done=partial(self._settled, message)
            )
        self.report(message, outcome, started)
        return outcome

    def retry_later(self, message: Received, delay: int) -> None:
        """Have SQS deliver a message again after delay seconds, without using up its redrive limit.

        Near the redrive limit (reached only through outages, or a consumer dying while it
        settled the request), a fresh copy is sent and the old one deleted: SQS's redrive
        would otherwise move it to the dead-letter queue with no response at all. Never on a
        FIFO queue, where settle() and hand_back() give such a request up instead.
        """
        # Not extended from here on: an extension would override the delay.
        self.heartbeat.forget(message)
        if self.fifo or message.receive_count < self.policy.requeue_at:
            self.outbox.change_visibility(message, min(delay, MAX_VISIBILITY))
            return
        self.outbox.send_afresh(message, fresh_copy_attributes(message), min(delay, MAX_DELAY_SECONDS))
        log.info(
            "sent_afresh message_id=%s request_id=%s receive_count=%d",
            message.message_id,
            message.request_id,
            message.receive_count,
        )

    def hand_back(self, message: Received, why: str) -> Outcome:
        """Let a message go untouched, visible again at once (a FIFO one near the redrive limit: FAILED)."""
        self.heartbeat.forget(message)
        if self.out_of_deliveries(message):
            try:
                widget_id = self.adapter.request(message).subject
            except InvalidRequest:
                widget_id = None
            reason = f"handed back ({why}); {self._limit_reason(message)}"
            return self.settle(message, Outcome(FAILED, widget_id, reason), time.monotonic())
        self._not_counted(message)
        self.retry_later(message, 0)
        log.debug("handing_back message_id=%s: %s", message.message_id, why)
        return Outcome(HANDED_BACK, reason=why)

    def _limit_reason(self, message: Received) -> str:
        """Say why a FIFO request near the redrive limit is given up rather than sent afresh."""
        return (
            f"delivered {message.receive_count} times, "
            f"near the redrive limit of {self.policy.redrive_limit}; "
            "not sent afresh on a FIFO queue, which would put it behind later requests of its group"
        )

    def _give_up(self, message: Received, error: Exception) -> bool:
        """Settle a message the consumer itself keeps failing on as FAILED; return True if it was."""
        reason = f"consumer error: {type(error).__name__}; gave up after {message.receive_count} receives"
        self.settle(message, Outcome(FAILED, None, reason), time.monotonic())
        return True

    def _settled(self, message: Received, called_at: float | None) -> None:
        """Stop covering a request once SQS confirmed its settlement (or refused it for good)."""
        self.heartbeat.forget(message)

    def report(self, message: Received, outcome: Outcome, started: float) -> None:
        """Count an outcome and log it: one line per delivery, with the ids."""
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        with self._counts_lock:
            self.counts[outcome.status] += 1
        detail = f" reason={outcome.reason!r}" if outcome.reason else ""
        if outcome.status == RETRY:
            detail = f" retry_in={outcome.delay}s{detail}"
        subject = self.adapter.subject_field
        log.info(
            "%s message_id=%s%s receive_count=%d duration_ms=%s%s",
            outcome.status,
            message.message_id,
            f" {subject}={printable(outcome.widget_id)}" if subject else "",
            message.receive_count,
            duration_ms,
            detail,
            extra={
                "message_id": message.message_id,
                **({subject: outcome.widget_id} if subject else {}),
                "receive_count": message.receive_count,
                "status": outcome.status,
                "duration_ms": duration_ms,
                "reason": outcome.reason,
            },
        )

    def counted(self) -> Counter[str]:
        """Return a copy of the outcome counts so far."""
        with self._counts_lock:
            return Counter(self.counts)
