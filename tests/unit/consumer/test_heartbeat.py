"""The heartbeat: held messages are extended before their visibility runs out, on a fake clock."""

from __future__ import annotations

from collections.abc import Callable

from tests.helpers import FakeClock
from widgets.consumer.heartbeat import Heartbeat
from widgets.messages import Received


def message(handle: str, received_at: float = 0.0) -> Received:
    """A received message with the given receipt handle."""
    return Received(handle, handle, "{}", 1, {}, received_at)


class Extensions:
    """Records the heartbeat's extensions; confirm() answers them as SQS would."""

    def __init__(self, clock: FakeClock) -> None:
        """Record extensions made at clock's times."""
        self.clock = clock
        self.asked: list[tuple[str, int]] = []
        self._waiting: list[tuple[float, Callable[[float | None], None]]] = []

    def __call__(self, message: Received, seconds: int, done: Callable[[float | None], None]) -> None:
        """Take an extension to make."""
        self.asked.append((message.receipt_handle, seconds))
        self._waiting.append((self.clock.now, done))

    def confirm(self) -> None:
        """Confirm every extension asked for: each counts from when it was asked."""
        waiting, self._waiting = self._waiting, []
        for called_at, done in waiting:
            done(called_at)


def test_extends_what_has_under_six_tenths_of_its_visibility_left() -> None:
    clock = FakeClock()
    extend = Extensions(clock)
    heartbeat = Heartbeat(extend=extend, visibility_timeout=10, clock=clock)
    heartbeat.track([message("early", 0.0), message("late", 4.0)])
    clock.now = 4.5
    assert heartbeat.beat() == 1
    assert extend.asked == [("early", 10)]
    extend.confirm()  # "early" visible until 14.5
    clock.now = 8.5
    assert heartbeat.beat() == 1
    assert extend.asked[-1] == ("late", 10)
    extend.confirm()
    clock.now = 10.5
    assert heartbeat.beat() == 1
    assert extend.asked[-1] == ("early", 10)
    extend.confirm()
    assert heartbeat.extensions == 3


def test_visible_until_moves_only_when_sqs_confirms_the_extension() -> None:
    clock = FakeClock()
    extend = Extensions(clock)
    heartbeat = Heartbeat(extend=extend, visibility_timeout=10, clock=clock)
    held = message("a")
    heartbeat.track([held])
    clock.now = 5.0
    assert heartbeat.beat() == 1
    clock.now = 9.9
    assert heartbeat.beat() == 0  # one extension at a time: it is still on its way
    assert heartbeat.running_out(held)  # and until SQS confirms it, the old deadline holds
    assert heartbeat.extensions == 0
    extend.confirm()
    assert not heartbeat.running_out(held)  # visible until 5.0 + 10
    clock.now = 14.9
    assert heartbeat.running_out(held)


def test_an_extension_refused_for_good_is_asked_again() -> None:
    clock = FakeClock()
    asked: list[Callable[[float | None], None]] = []
    heartbeat = Heartbeat(extend=lambda m, s, done: asked.append(done), visibility_timeout=10, clock=clock)
    heartbeat.track([message("a")])
    clock.now = 5.0
    heartbeat.beat()
    asked[0](None)
    assert heartbeat.extensions == 0
    assert heartbeat.beat() == 1


def test_forgotten_messages_are_not_extended() -> None:
    clock = FakeClock()
    extend = Extensions(clock)
    heartbeat = Heartbeat(extend=extend, visibility_timeout=2, clock=clock)
    held = message("a")
    heartbeat.track([held])
    heartbeat.forget(held)
    clock.now = 1.9
    assert heartbeat.beat() == 0
    assert extend.asked == []
    assert heartbeat.held() == 0


def test_running_out() -> None:
    clock = FakeClock()
    extend = Extensions(clock)
    heartbeat = Heartbeat(extend=extend, visibility_timeout=2, clock=clock)
    held = message("a")
    heartbeat.track([held])
    clock.now = 1.5
    assert not heartbeat.running_out(held)
    clock.now = 1.9
    assert heartbeat.running_out(held)
    heartbeat.beat()
    extend.confirm()
    assert not heartbeat.running_out(held)
