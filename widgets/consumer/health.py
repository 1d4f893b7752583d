"""The consumer's health, for GET /healthz: does it receive normally?

Healthy (200) while the receiver's threads run and their receives work: the last receive worked,
or the latest one is under way for less than the long poll plus STUCK_MARGIN. Unhealthy (503,
with the reason) when a thread is gone, when receives fail (SQS unreachable, credentials
refused, queue gone), or when a receive hangs. Waiting for a free worker is healthy: the
workers are busy.

It is unhealthy too when its writes (responses, deletes, visibility changes) have failed for
longer than a visibility timeout: requests it answered may then be delivered and made again.

An open breaker is healthy too: the maker is down, not this consumer, and restarting it would
not bring the maker back; it would only put every consumer in a restart loop and lose the
breaker's back-off. The body says the breaker's state, for whoever wants to alert on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# How much longer than --wait-time a receive may take before the receiver counts as stuck:
# the receive client's read timeout is the long poll plus 5 s, so a hung call ends before this.
STUCK_MARGIN = 30.0


@dataclass(frozen=True)
class ReceiverState:
    """What the health check reads from the receiver; times are time.monotonic() values."""

    alive: bool  # every one of its threads runs
    stopping: bool  # the consumer was asked to stop
    failing: str | None  # why the last receive failed, None if it worked
    held_back: bool  # settling holds receiving back: the last receive's result may be old news
    last_attempt: float  # start of the last receive call
    last_receive: float  # end of the last receive SQS answered


@dataclass(frozen=True)
class WriterState:
    """What the health check reads from the outbox."""

    failing: str | None = None  # why the last write call failed, while they fail
    failing_for: float = 0.0  # seconds since the first of the failed calls in a row
    backlog: int = 0  # settlements SQS has not confirmed yet
    oldest: float = 0.0  # seconds the oldest of them has waited


@dataclass(frozen=True)
class Health:
    """A health verdict: the HTTP status to answer and its JSON body."""

    status: int
    body: dict[str, Any]


def check(
    receiver: ReceiverState,
    breaker_state: str,
    outage: float,
    now: float,
    wait_time: float,
    writer: WriterState | None = None,
    visibility_timeout: float = 30.0,
) -> Health:
    """Judge the consumer's health from its receiver, its writes and its breaker at time now."""
    writer = writer or WriterState()
    if receiver.held_back and writer.failing is None:
        # No receive is made while settling catches up, and the writes work: SQS is back.
        receiver = replace(receiver, failing=None)
    reason = trouble(receiver, now, wait_time)
    if reason is None and writer.failing is not None and writer.failing_for > visibility_timeout:
        reason = f"writes fail for {writer.failing_for:.0f}s: {writer.failing}"
    body: dict[str, Any] = {"status": "ok"} if reason is None else {"status": "unhealthy", "reason": reason}
    body["last_receive_seconds_ago"] = round(now - receiver.last_receive, 1)
    body["unsettled"] = writer.backlog
    body["oldest_unsettled_seconds"] = round(writer.oldest, 1)
    body["breaker"] = breaker_state
    if breaker_state != "closed":
        body["maker_outage_seconds"] = round(outage, 1)
    return Health(200 if reason is None else 503, body)


def trouble(receiver: ReceiverState, now: float, wait_time: float) -> str | None:
    """Return why the receiver does not receive normally, or None if it does."""
    if not receiver.alive:
        return "the consumer is stopping" if receiver.stopping else "a receiver thread has died"
    if receiver.failing is not None:
        return f"receives fail: {receiver.failing}"
    under_way = now - receiver.last_attempt
    if receiver.last_attempt > receiver.last_receive and under_way > wait_time + STUCK_MARGIN:
        return f"a receive has not returned for {under_way:.0f}s (long poll {wait_time:g}s)"
    return None
