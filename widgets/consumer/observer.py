"""What the consumer reports about its work, for metrics: one interface, and a default that ignores it.

Two kinds of report, so that a consumer without metrics pays for nothing:

- events that only happen (a maker call and how long it took, a receive and its batch size, an
  SQS call that failed) are pushed to the observer as they happen;
- counts and levels the mechanisms keep anyway (outcomes, requests held, outbox backlog, the
  breaker's state, heartbeat extensions, rate-limit waits) are pulled as one Snapshot, only
  when something asks for them (a scrape of /metrics).

widgets/consumer/metrics.py is the Prometheus implementation; this module imports no metrics library.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    """The consumer's counts and levels at one moment, read from its mechanisms."""

    outcomes: Mapping[str, int]  # deliveries settled, by status (OK, REJECTED, FAILED, RETRY)
    held: int  # received and not yet answered by the maker: waiting for a worker, a rate slot, or in a call
    maker_calls_in_flight: int
    outbox_backlog: int  # settlements and visibility changes SQS has not yet confirmed
    outbox_oldest_seconds: float  # how long the oldest of them has waited
    breaker_state: str  # closed, open or half-open
    breaker_opened: int  # outages begun
    breaker_open_seconds: float  # time not closed (open or half-open), the current outage included
    heartbeat_extensions: int
    rate_limit_waits: int
    rate_limit_wait_seconds: float
    last_receive: float | None  # Unix time of the last receive that SQS answered; None: none yet


class Observer:
    """Receives the consumer's reports; this base class drops them, and is what runs without metrics."""

    # False: nothing listens, so the consumer skips reports that would cost it work to make.
    active = False

    def maker_call(self, code: int | None, no_answer: str | None, seconds: float) -> None:
        """Note one maker call: its HTTP status, or why there was none (timeout, unreachable, error)."""

    def received(self, count: int) -> None:
        """Note one receive that SQS answered, with how many messages it brought."""

    def sqs_error(self, operation: str, error: str) -> None:
        """Note an SQS call that failed, by operation (ReceiveMessage, ...) and error code or class."""

    def sqs_refused(self, operation: str, error: str, count: int) -> None:
        """Note entries of a batch call that SQS refused one by one, by operation and error code."""

    def watch(self, snapshot: Callable[[], Snapshot]) -> None:
        """Read the consumer's counts and levels through snapshot() whenever they are asked for."""
