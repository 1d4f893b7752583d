"""The heartbeat: held messages are extended before their visibility runs out, on a fake clock."""

from __future__ import annotations

from typing import Any

from tests.test_breaker import FakeClock
from widgets.heartbeat import Heartbeat
from widgets.messages import Received


def message(handle: str, received_at: float = 0.0) -> Received:
    """A received message with the given receipt handle."""
    return Received(handle, handle, "{}", 1, {}, received_at)


def test_extends_only_what_has_under_half_its_visibility_left() -> None:
    clock = FakeClock()
    extended: list[tuple[str, int]] = []
    heartbeat = Heartbeat(
        extend=lambda m, s: extended.append((m.receipt_handle, s)), visibility_timeout=10, clock=clock
    )
    heartbeat.track([message("early", 0.0), message("late", 4.0)])
    clock.now = 5.5
    assert heartbeat.beat() == 1
    assert extended == [("early", 10)]
    clock.now = 9.5
    assert heartbeat.beat() == 1  # "late" now, "early" was extended to 15.5
    assert extended[-1] == ("late", 10)
    clock.now = 11.0
    assert heartbeat.beat() == 1
    assert extended[-1] == ("early", 10)
    assert heartbeat.extensions == 3


def test_forgotten_messages_are_not_extended() -> None:
    clock = FakeClock()
    extended: list[Any] = []
    heartbeat = Heartbeat(extend=lambda m, s: extended.append(m), visibility_timeout=2, clock=clock)
    held = message("a")
    heartbeat.track([held])
    heartbeat.forget(held)
    clock.now = 1.9
    assert heartbeat.beat() == 0
    assert extended == []
    assert heartbeat.held() == 0


def test_running_out() -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(extend=lambda m, s: None, visibility_timeout=2, clock=clock)
    held = message("a")
    heartbeat.track([held])
    clock.now = 1.5
    assert not heartbeat.running_out(held)
    clock.now = 1.9
    assert heartbeat.running_out(held)
    heartbeat.beat()
    assert not heartbeat.running_out(held)
