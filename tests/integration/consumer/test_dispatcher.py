"""The dispatcher: workers, capacity, and per-group lanes, with a handle() that records what it saw."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import always, wait_until
from widgets.consumer.dispatcher import BEHIND, STOPPING, Dispatcher
from widgets.messages import Received


def message(group: str | None, n: int) -> Received:
    """Return a request of group (None: a standard queue's) numbered n."""
    name = f"{group}-{n}"
    return Received(name, f"handle-{name}", "{}", 1, {}, time.monotonic(), group)


class Recorder:
    """A handle() and release() that note the order of calls and how many of each group run at once."""

    def __init__(self, pause: float = 0.005) -> None:
        """Settle every message after pause seconds unless told otherwise."""
        self.pause = pause
        self.unsettled: set[str] = set()
        self.wait_for: dict[str, threading.Event] = {}
        self.started: list[str] = []
        self.released: list[tuple[str, str]] = []
        self.running: Counter[str | None] = Counter()
        self.most: Counter[str | None] = Counter()
        self.most_at_once = 0
        self.lock = threading.Lock()

    def handle(self, received: Received) -> bool:
        """Run a message: note it, pause, and settle it unless it is one of unsettled."""
        with self.lock:
            self.started.append(received.message_id)
            self.running[received.group_id] += 1
            self.most[received.group_id] = max(self.most[received.group_id], self.running[received.group_id])
            self.most_at_once = max(self.most_at_once, sum(self.running.values()))
        event = self.wait_for.get(received.message_id)
        if event is not None:
            event.wait(2)
        time.sleep(self.pause)
        with self.lock:
            self.running[received.group_id] -= 1
        return received.message_id not in self.unsettled

    def release(self, received: Received, why: str) -> None:
        """Note a message handed back."""
        with self.lock:
            self.released.append((received.message_id, why))


@pytest.fixture
def recorder() -> Recorder:
    """A fresh recorder."""
    return Recorder()


@pytest.fixture
def make_dispatcher(recorder: Recorder) -> Iterator[Callable[..., Dispatcher]]:
    """Build started dispatchers on the recorder; stop and join them at the end."""
    made: list[tuple[Dispatcher, threading.Event]] = []

    def make(workers: int = 4, lookahead: int = 100) -> Dispatcher:
        stopping = threading.Event()
        dispatcher = Dispatcher(
            workers=workers,
            lookahead=lookahead,
            handle=recorder.handle,
            release=recorder.release,
            stopping=stopping,
        )
        dispatcher.start()
        made.append((dispatcher, stopping))
        return dispatcher

    yield make
    for dispatcher, stopping in made:
        stopping.set()
        dispatcher.join()


def give(dispatcher: Dispatcher, messages: list[Received]) -> None:
    """Reserve room for messages, as the receiver does, and dispatch them."""
    assert dispatcher.wait_for_room(len(messages)) == len(messages)
    dispatcher.dispatch(messages)


def interleaved(groups: str, each: int) -> list[Received]:
    """Return each messages of every group, interleaved as a receive of several groups brings them."""
    return [message(group, n) for n in range(each) for group in groups]


def test_each_group_runs_in_order_one_at_a_time(
    recorder: Recorder, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    dispatcher = make_dispatcher(workers=4)
    give(dispatcher, interleaved("abc", 15))
    wait_until(lambda: len(recorder.started) == 45 and dispatcher.held() == 0)
    for group in "abc":
        assert [m for m in recorder.started if m.startswith(group)] == [f"{group}-{n}" for n in range(15)]
        assert recorder.most[group] == 1
    assert recorder.released == []
    assert dispatcher.lanes() == {}


def test_groups_run_side_by_side(recorder: Recorder, make_dispatcher: Callable[..., Dispatcher]) -> None:
    # a-0 waits (up to 2 s) until b-0 has started: a dispatcher that ran one group at a time would
    # start b-0 only after a-0 ended, so both would never run at once.
    b_started = threading.Event()
    recorder.wait_for["a-0"] = b_started
    dispatcher = make_dispatcher(workers=2)
    give(dispatcher, [message("a", 0), message("a", 1), message("b", 0)])
    wait_until(lambda: "b-0" in recorder.started)
    b_started.set()
    wait_until(lambda: len(recorder.started) == 3 and dispatcher.held() == 0)
    assert recorder.most_at_once == 2
    assert recorder.started.index("a-1") > recorder.started.index("a-0")


def test_an_unsettled_message_hands_back_the_rest_of_its_group(
    recorder: Recorder, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    recorder.unsettled.add("a-1")
    dispatcher = make_dispatcher(workers=3)
    give(dispatcher, interleaved("ab", 5))
    wait_until(lambda: dispatcher.held() == 0)
    # a-1 went back to the queue (retried, or handed back while the maker is down): a-2 to a-4
    # go back untouched, in order, so SQS delivers the group again from a-1; b is not held up.
    assert [m for m in recorder.started if m.startswith("a")] == ["a-0", "a-1"]
    assert recorder.released == [("a-2", BEHIND), ("a-3", BEHIND), ("a-4", BEHIND)]
    assert [m for m in recorder.started if m.startswith("b")] == [f"b-{n}" for n in range(5)]
    # The group's lane is gone: its messages received again start a new one, in order.
    assert dispatcher.lanes() == {}
    recorder.unsettled.clear()
    give(dispatcher, [message("a", n) for n in range(1, 5)])
    wait_until(lambda: dispatcher.held() == 0)
    assert [m for m in recorder.started if m.startswith("a")] == ["a-0", "a-1", "a-1", "a-2", "a-3", "a-4"]


def test_a_handler_error_hands_back_the_rest_of_its_group(
    recorder: Recorder, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    def broken(received: Received) -> bool:
        raise RuntimeError("a bug")

    dispatcher = make_dispatcher(workers=2)
    dispatcher.handle = broken
    give(dispatcher, [message("a", n) for n in range(3)])
    wait_until(lambda: dispatcher.held() == 0)
    assert recorder.released == [("a-1", BEHIND), ("a-2", BEHIND)]


def test_messages_without_a_group_are_not_held_back(
    recorder: Recorder, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    recorder.pause = 0.05
    dispatcher = make_dispatcher(workers=4)
    give(dispatcher, [message(None, n) for n in range(4)])
    wait_until(lambda: dispatcher.held() == 0)
    assert sorted(recorder.started) == [f"None-{n}" for n in range(4)]
    assert recorder.most[None] > 1
    assert dispatcher.lanes() == {}


def test_capacity_counts_messages_waiting_in_lanes(
    recorder: Recorder, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    first = threading.Event()
    recorder.wait_for["a-0"] = first
    dispatcher = make_dispatcher(workers=2, lookahead=2)
    give(dispatcher, [message("a", n) for n in range(4)])
    # One worker busy, three waiting behind it: the four slots are all taken.
    wait_until(lambda: recorder.started == ["a-0"])
    assert dispatcher.held() == 4
    assert dispatcher.lanes() == {"a": 3}
    first.set()
    wait_until(lambda: dispatcher.held() == 0)
    assert recorder.started == [f"a-{n}" for n in range(4)]


def test_stopping_hands_back_every_message_waiting_in_a_lane(
    recorder: Recorder, make_dispatcher: Callable[..., Dispatcher]
) -> None:
    first = threading.Event()
    recorder.wait_for["a-0"] = first
    stopping = threading.Event()
    dispatcher = Dispatcher(
        workers=2, lookahead=10, handle=recorder.handle, release=recorder.release, stopping=stopping
    )
    dispatcher.start()
    give(dispatcher, [message("a", n) for n in range(3)] + [message("b", 0)])
    wait_until(lambda: "a-0" in recorder.started and "b-0" in recorder.started)
    stopping.set()
    first.set()
    dispatcher.join()
    # a-0 was being handled and is finished; what waited behind it goes back untouched.
    assert recorder.started.count("a-0") == 1 and "a-1" not in recorder.started
    assert recorder.released == [("a-1", STOPPING), ("a-2", STOPPING)]
    assert dispatcher.held() == 0
    assert dispatcher.lanes() == {}


def test_a_receiver_is_woken_as_soon_as_a_batch_fits(
    make_dispatcher: Callable[..., Dispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("widgets.consumer.dispatcher.ROOM_POLL", 60.0)  # only a wake-up can end the wait
    dispatcher = make_dispatcher(workers=2, lookahead=30)  # three receives' batches beyond the workers
    assert [dispatcher.wait_for_room(10) for _ in range(3)] == [10, 10, 10]
    assert dispatcher.wait_for_room(2) == 2  # full: 32 of 32 held
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(dispatcher.wait_for_room(10)), daemon=True)
    waiter.start()
    time.sleep(0.1)  # for the waiter to be waiting (nothing shows it); were it not yet, it would pass anyway
    dispatcher.let_go(9)
    always(lambda: got == [], 0.1, "woken with 9 free: no batch fits yet")
    dispatcher.let_go(1)  # 10 free: one batch, far from the whole lookahead
    waiter.join(5)
    assert got == [10]
