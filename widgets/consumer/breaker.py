"""The circuit breaker toward the maker: stop taking requests while the maker is down as a whole.

A request that fails while others succeed is that request's problem: it is retried and, after
--max-receives deliveries, FAILED. A failure of the maker as a whole (no connection, 429 or
503, or several requests in a row failing) is nobody's request's fault: the breaker opens, the
consumer stops receiving and hands back what it holds, and no request is FAILED because of it.

    closed --(systemic failure)--> open --(probe GET /healthz answers)--> half-open
    half-open --(a few trial requests succeed)--> closed;  half-open --(a failure)--> open
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from widgets.consumer.maker_client import FAILING

log = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class Breaker:
    """Tells whether the maker's failures are systemic, and holds the consumer back while they are."""

    def __init__(
        self,
        *,
        threshold: int = 3,
        trial_calls: int = 3,
        first_wait: float = 0.5,
        max_wait: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open after threshold failures in a row for different requests (at once for no connection,
        429 or 503); probe after first_wait, doubling to max_wait; close after trial_calls successes."""
        self.threshold = threshold
        self.trial_calls = trial_calls
        self.first_wait = first_wait
        self.max_wait = max_wait
        self.clock = clock
        self.state = CLOSED
        self._failing: set[str] = set()  # requests that failed since the last success
        self._wait = first_wait
        self._probe_at = 0.0
        self._outage_started = 0.0
        self.opened = 0  # outages begun
        self._past_outages = 0.0  # seconds of the outages that ended
        self._trials_taken = 0
        self._trials_passed = 0
        self._lock = threading.Lock()

    def allowance(self, wanted: int) -> int:
        """Return how many requests may be taken now (and count them as trials when half-open)."""
        with self._lock:
            if self.state == CLOSED:
                return wanted
            if self.state == OPEN:
                return 0
            taken = min(wanted, self.trial_calls - self._trials_taken)
            self._trials_taken += taken
            return taken

    def unused(self, count: int) -> None:
        """Give back trials that allowance() granted but no request filled (the queue had fewer)."""
        with self._lock:
            if self.state == HALF_OPEN:
                self._trials_taken = max(self._trials_taken - count, self._trials_passed)

    def admit(self) -> str | None:
        """Return the state a held request is sent to the maker in (None: open, do not send it)."""
        state = self.state
        return None if state == OPEN else state

    def succeeded(self) -> None:
        """Record that the maker answered a request (made or refused it: either way it is up)."""
        with self._lock:
            self._failing.clear()
            if self.state != HALF_OPEN:
                return
            self._trials_passed += 1
            if self._trials_passed >= self.trial_calls:
                self.state = CLOSED
                self._wait = self.first_wait
                self._past_outages += self.outage()
                log.info("breaker_closed: the maker is back after an outage of %.1fs", self.outage())

    def failed(
        self,
        request_id: str,
        failure: str | None,
        reason: str,
        retry_after: float | None = None,
        trial: bool = False,
    ) -> bool:
        """Record a failed call (trial: sent while half-open); return True if the maker as a whole failed."""
        with self._lock:
            if trial and failure == FAILING:
                # The maker said it was healthy and then failed this request: count it against
                # the request, or requests that fail on their own would never end FAILED once
                # they are all that is left.
                if self.state != OPEN:
                    self._open(reason, retry_after)
                return False
            if self.state == OPEN:
                return True  # a call that started before the breaker opened
            if self.state == HALF_OPEN:
                self._open(reason, retry_after)
                return True
            if failure == FAILING:
                self._failing.add(request_id)
                if len(self._failing) < self.threshold:
                    return False
                reason = f"{reason} ({len(self._failing)} requests in a row failed)"
            self._open(reason, retry_after)
            return True

    def _open(self, reason: str, retry_after: float | None) -> None:
        """Open (again): wait the back-off, or what the maker asked for, before the next probe."""
        now = self.clock()
        if self.state == CLOSED:
            self._outage_started = now
            self.opened += 1
            log.warning("breaker_open: %s; holding requests back and probing the maker", reason)
        else:
            # A trial failed: the outage goes on; wait longer before the next probe.
            self._wait = min(self._wait * 2, self.max_wait)
            log.warning("breaker_open: %s; a trial request failed, the outage goes on", reason)
        self.state = OPEN
        self._failing.clear()
        self._probe_at = now + (retry_after if retry_after is not None else self._wait)

    def until_probe(self) -> float:
        """Return the seconds until the maker should be probed (0: now); only meaningful when open."""
        return max(self._probe_at - self.clock(), 0.0)

    def probed(self, healthy: bool) -> None:
        """Record a probe's result: half-open on success, a longer wait on failure."""
        with self._lock:
            if self.state != OPEN:
                return
            if healthy:
                self.state = HALF_OPEN
                self._trials_taken = self._trials_passed = 0
                log.info("breaker_half_open: the maker answers; trying %d requests", self.trial_calls)
            else:
                self._wait = min(self._wait * 2, self.max_wait)
                self._probe_at = self.clock() + self._wait

    def outage(self) -> float:
        """Return the seconds since the current (or last) outage began."""
        return self.clock() - self._outage_started

    def down_seconds(self) -> float:
        """Return the seconds spent open or half-open so far, the current outage included."""
        with self._lock:
            current = self.outage() if self.state != CLOSED else 0.0
            return self._past_outages + current
