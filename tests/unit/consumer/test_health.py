"""The consumer's health verdict, and the endpoint serving it with the metrics over HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from widgets.consumer.health import STUCK_MARGIN, Health, ReceiverState, WriterState, check

WAIT_TIME = 20.0


def receiver(**changes: Any) -> ReceiverState:
    """Return a receiver whose last receive, started at 90 and answered at 100, worked; with changes."""
    values: dict[str, Any] = {
        "alive": True,
        "stopping": False,
        "failing": None,
        "held_back": False,
        "last_attempt": 90.0,
        "last_receive": 100.0,
    }
    return ReceiverState(**{**values, **changes})


@pytest.mark.parametrize(
    ("state", "now", "status", "reason"),
    [
        (receiver(), 101.0, 200, None),
        # Waiting for a free worker for minutes: the workers are busy, not stuck.
        (receiver(), 400.0, 200, None),
        # A long poll under way, within --wait-time and the margin.
        (receiver(last_attempt=101.0), 101.0 + WAIT_TIME + STUCK_MARGIN - 1, 200, None),
        (
            receiver(last_attempt=101.0),
            101.0 + WAIT_TIME + STUCK_MARGIN + 1,
            503,
            "a receive has not returned for 51s (long poll 20s)",
        ),
        (
            receiver(last_attempt=103.0, failing="cannot reach SQS at http://127.0.0.1:9324"),
            104.0,
            503,
            "receives fail: cannot reach SQS at http://127.0.0.1:9324",
        ),
        (receiver(alive=False), 101.0, 503, "a receiver thread has died"),
        (receiver(alive=False, stopping=True), 101.0, 503, "the consumer is stopping"),
    ],
)
def test_verdicts(state: ReceiverState, now: float, status: int, reason: str | None) -> None:
    health = check(state, "closed", outage=0.0, now=now, wait_time=WAIT_TIME)
    assert health.status == status
    assert health.body.get("reason") == reason
    assert health.body["status"] == ("ok" if status == 200 else "unhealthy")
    assert health.body["last_receive_seconds_ago"] == round(now - 100.0, 1)
    assert health.body["breaker"] == "closed"


@pytest.mark.parametrize("state", ["open", "half-open"])
def test_a_maker_outage_is_healthy_and_says_so(state: str) -> None:
    health = check(receiver(), state, outage=42.04, now=300.0, wait_time=WAIT_TIME)
    assert health == Health(
        200,
        {
            "status": "ok",
            "last_receive_seconds_ago": 200.0,
            "unsettled": 0,
            "oldest_unsettled_seconds": 0.0,
            "breaker": state,
            "maker_outage_seconds": 42.0,
        },
    )


def test_writes_failing_for_longer_than_a_visibility_timeout_are_unhealthy() -> None:
    writer = WriterState(failing="SQS answered InternalFailure", failing_for=31.0, backlog=12, oldest=31.0)
    health = check(receiver(), "closed", 0.0, 101.0, WAIT_TIME, writer, visibility_timeout=30)
    assert health.status == 503
    assert health.body["reason"] == "writes fail for 31s: SQS answered InternalFailure"
    assert (health.body["unsettled"], health.body["oldest_unsettled_seconds"]) == (12, 31.0)
    brief = WriterState(failing="SQS answered InternalFailure", failing_for=29.0, backlog=12, oldest=29.0)
    assert check(receiver(), "closed", 0.0, 101.0, WAIT_TIME, brief, visibility_timeout=30).status == 200


def test_a_receive_failure_is_old_news_while_receiving_is_held_back_and_writes_work() -> None:
    failed = receiver(failing="cannot reach SQS at http://127.0.0.1:9324", held_back=True)
    assert check(failed, "closed", 0.0, 101.0, WAIT_TIME, WriterState()).status == 200
    writes_fail = WriterState(failing="cannot reach SQS at http://127.0.0.1:9324", failing_for=2.0)
    assert check(failed, "closed", 0.0, 101.0, WAIT_TIME, writes_fail).status == 503  # SQS is down
