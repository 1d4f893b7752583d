"""The circuit breaker: a failing request against a maker down as a whole, on a fake clock."""

from __future__ import annotations

import pytest

from tests.helpers import FakeClock
from widgets.consumer.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from widgets.consumer.maker_client import FAILING, OVERLOADED, UNREACHABLE


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock."""
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> Breaker:
    """A breaker opening after three requests in a row fail, probing after 1 s up to 8 s."""
    return Breaker(threshold=3, trial_calls=2, first_wait=1.0, max_wait=8.0, clock=clock)


def test_one_request_failing_again_and_again_never_opens_it(breaker: Breaker) -> None:
    for _ in range(10):
        assert breaker.failed("poison", FAILING, "maker answered 500") is False
    assert breaker.state == CLOSED


def test_a_success_between_failures_keeps_it_closed(breaker: Breaker) -> None:
    for n in range(10):
        assert breaker.failed(f"request-{n}", FAILING, "500") is False
        if n % 2:
            breaker.succeeded()
    assert breaker.state == CLOSED


def test_failures_of_different_requests_in_a_row_open_it(breaker: Breaker) -> None:
    assert breaker.failed("a", FAILING, "500") is False
    assert breaker.failed("b", FAILING, "500") is False
    assert breaker.failed("c", FAILING, "500") is True
    assert breaker.state == OPEN
    assert breaker.allowance(10) == 0
    assert breaker.admit() is None


@pytest.mark.parametrize("failure", [UNREACHABLE, OVERLOADED])
def test_no_connection_or_overload_opens_it_at_once(breaker: Breaker, failure: str) -> None:
    assert breaker.failed("a", failure, "down") is True
    assert breaker.state == OPEN


def test_probes_back_off_to_the_cap_and_a_healthy_probe_half_opens(
    breaker: Breaker, clock: FakeClock
) -> None:
    breaker.failed("a", UNREACHABLE, "down")
    waits = []
    for _ in range(6):
        waits.append(breaker.until_probe())
        clock.now += breaker.until_probe()
        breaker.probed(False)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    clock.now += breaker.until_probe()
    breaker.probed(True)
    assert breaker.state == HALF_OPEN


def test_half_open_lets_a_few_through_then_closes(breaker: Breaker, clock: FakeClock) -> None:
    breaker.failed("a", UNREACHABLE, "down")
    clock.now = 5.0
    breaker.probed(True)
    assert breaker.allowance(10) == 2  # the trials
    assert breaker.allowance(10) == 0  # until they are done
    breaker.unused(1)  # the queue had only one
    assert breaker.allowance(10) == 1
    breaker.succeeded()
    assert breaker.state == HALF_OPEN
    breaker.succeeded()
    assert breaker.state == CLOSED
    assert breaker.allowance(10) == 10
    assert breaker.outage() == 5.0


def test_a_trial_that_fails_reopens_it_for_longer(breaker: Breaker, clock: FakeClock) -> None:
    breaker.failed("a", UNREACHABLE, "down")
    clock.now = 1.0
    breaker.probed(True)
    breaker.allowance(2)
    assert breaker.admit() == HALF_OPEN
    # The maker said it was healthy, then failed the trials: their own failures.
    assert breaker.failed("b", FAILING, "500", trial=True) is False
    assert breaker.state == OPEN
    assert breaker.until_probe() == 2.0
    assert breaker.failed("c", FAILING, "500", trial=True) is False
    # A later trial that cannot connect is the maker's failure again.
    clock.now += 2.0
    breaker.probed(True)
    assert breaker.failed("d", UNREACHABLE, "down", trial=True) is True


def test_retry_after_sets_how_long_it_stays_open(breaker: Breaker) -> None:
    breaker.failed("a", OVERLOADED, "429", retry_after=7.0)
    assert breaker.until_probe() == 7.0


def test_calls_that_fail_after_it_opened_are_the_outage(breaker: Breaker) -> None:
    breaker.failed("a", UNREACHABLE, "down")
    assert breaker.failed("b", FAILING, "timeout") is True


def test_outages_are_counted_and_timed_to_the_second(breaker: Breaker, clock: FakeClock) -> None:
    assert (breaker.opened, breaker.down_seconds()) == (0, 0.0)
    breaker.failed("a", UNREACHABLE, "maker unreachable")
    clock.now = 5.0
    assert (breaker.opened, breaker.down_seconds()) == (1, 5.0)
    breaker.probed(True)
    clock.now = 7.0
    breaker.failed("b", UNREACHABLE, "maker unreachable", trial=True)  # a failed trial: the same outage
    assert (breaker.opened, breaker.down_seconds()) == (1, 7.0)
    clock.now = 10.0
    breaker.probed(True)
    breaker.succeeded()
    breaker.succeeded()
    assert breaker.state == CLOSED
    clock.now = 100.0
    assert (breaker.opened, breaker.down_seconds()) == (1, 10.0)
    breaker.failed("c", OVERLOADED, "maker answered 503")
    clock.now = 101.5
    assert (breaker.opened, breaker.down_seconds()) == (2, 11.5)
