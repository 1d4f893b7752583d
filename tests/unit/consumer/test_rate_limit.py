"""The rate limiter: calls spaced evenly across callers, on a fake clock."""

from __future__ import annotations

import threading

from tests.helpers import FakeClock
from widgets.consumer.rate_limit import RateLimiter


def test_slots_are_spaced_by_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=4, clock=clock)
    assert [limiter.reserve() for _ in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert limiter.waits == 4
    clock.now = 10.0  # idle for long: no burst is saved up
    assert [limiter.reserve() for _ in range(2)] == [0.0, 0.25]


def test_no_limit_never_waits() -> None:
    limiter = RateLimiter(rate=None)
    assert all(limiter.reserve() == 0.0 for _ in range(100))


def test_wait_gives_up_when_stopping() -> None:
    limiter = RateLimiter(rate=0.1)
    stopping = threading.Event()
    assert limiter.wait(stopping) is True  # the first slot is now
    stopping.set()
    assert limiter.wait(stopping) is False  # the next is 10 s away: not waited for
