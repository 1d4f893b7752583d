"""A maker outage of any length costs nothing: breaker, Retry-After, heartbeat and rate limit, on moto."""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from devtools.stack import free_port
from tests.helpers import CheckedCalls, ScriptedMaker, all_bodies, always, depth, serve_in_thread, wait_until
from widgets.consumer import Consumer, Settings
from widgets.consumer.rate_limit import RateLimiter
from widgets.maker import create_app
from widgets.messages import FAILED, OK
from widgets.producer import send_requests
from widgets.sqs import QueueUrls

VALID_ID = "31f37378-54f4-11e5-ad75-3c970e65f731"


class SwitchableMaker:
    """The real maker app on a fixed port, which can go down (connection refused) and come back."""

    def __init__(self, app: Flask) -> None:
        """Prepare it down, on a free port."""
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/add"
        self._stop: Any = None

    def up(self) -> None:
        """Start serving."""
        self._stop = serve_in_thread(make_server("127.0.0.1", self.port, self.app, threaded=True))

    def down(self) -> None:
        """Stop serving: calls are refused."""
        if self._stop is not None:
            self._stop()
            self._stop = None


@pytest.fixture
def switchable(tmp_path: Path) -> Iterator[SwitchableMaker]:
    """A real maker that a test takes down and brings back; stopped at the end."""
    maker = SwitchableMaker(create_app({"DATABASE": str(tmp_path / "w.db"), "TOKEN": None}))
    yield maker
    maker.down()


def running(consumer: Consumer) -> Consumer:
    """Start a consumer (the caller stops it)."""
    consumer.start()
    return consumer


def test_an_outage_five_retry_windows_long_fails_nothing(
    sqs: Any, queues: QueueUrls, switchable: SwitchableMaker
) -> None:
    count = 200
    widget_ids = [str(uuid.uuid1()) for _ in range(count)]
    send_requests(sqs, queues.request, widget_ids)
    # Two receives: five retry windows of 1 s are 10 s, and a request whose failure were counted
    # during the outage would end FAILED sooner.
    settings = Settings(
        maker_url=switchable.url, max_receives=2, retry_delay=1, wait_time=0, workers=4, visibility_timeout=5
    )
    # Receives, each with when its thread last asked the breaker how many it may take.
    receives = CheckedCalls()
    sqs.receive_message = receives.action(sqs.receive_message)
    consumer = Consumer(sqs, queues, settings)
    consumer.breaker.allowance = receives.check(consumer.breaker.allowance)  # type: ignore[method-assign]
    running(consumer)
    try:
        wait_until(lambda: consumer.breaker.state == "open")
        opened = time.monotonic()  # a receive that asked the breaker before may still begin
        # The outage itself: its length (five retry windows) is the scenario, nothing to wait for.
        time.sleep(5 * settings.max_receives * settings.retry_delay)
        # No receive while the breaker is open: only probes of /healthz.
        assert receives.after(opened) == 0
        switchable.up()
        # Every request answered and deleted (at least once: a request may be delivered twice).
        wait_until(lambda: depth(sqs, queues.request) == (0, 0) and consumer.outbox.pending() == 0, 60)
    finally:
        consumer.stop()
        assert consumer.join(grace=1) == 0
    assert consumer.counts[FAILED] == 0
    assert all_bodies(sqs, queues.dead_letter) == []
    responses = all_bodies(sqs, queues.response)
    assert {r["Status"] for r in responses} == {OK}
    assert {r["WidgetId"] for r in responses} == set(widget_ids)
    assert switchable.app.extensions["widget_store"].count() == count  # each made once


def test_a_request_failing_among_others_ends_failed(sqs: Any, queues: QueueUrls, tmp_path: Path) -> None:
    doomed = str(uuid.uuid1())
    others = [str(uuid.uuid1()) for _ in range(20)]
    app = create_app({"DATABASE": str(tmp_path / "w.db"), "TOKEN": None, "FAIL_WIDGET_IDS": {doomed}})
    maker = SwitchableMaker(app)
    maker.up()
    send_requests(sqs, queues.request, [doomed, *others])
    settings = Settings(maker_url=maker.url, max_receives=3, retry_delay=1, wait_time=0, workers=2)
    consumer = running(Consumer(sqs, queues, settings))
    try:
        wait_until(lambda: consumer.counts[FAILED] == 1 and consumer.counts[OK] == 20, timeout=20)
    finally:
        consumer.stop()
        consumer.join(grace=1)
        maker.down()
    responses = all_bodies(sqs, queues.response)
    [failed] = [r for r in responses if r["Status"] == FAILED]
    assert failed["WidgetId"] == doomed and failed["ReceiveCount"] == 3
    assert "maker answered 500" in failed["Reason"]
    [kept] = all_bodies(sqs, queues.dead_letter)
    assert kept["WidgetId"] == doomed


def test_a_slow_maker_call_outlasting_the_visibility_is_made_once(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.delay = 3.0
    send_requests(sqs, queues.request, [VALID_ID])
    settings = Settings(maker_url=url, wait_time=0, workers=1, http_timeout=60, visibility_timeout=1)
    first = running(Consumer(sqs, queues, settings))
    second: Consumer | None = None
    try:
        wait_until(lambda: len(script.requests) == 1)
        # A second consumer polls the queue all along the 3 s call: it must never get the request.
        second = running(Consumer(sqs, queues, settings))
        wait_until(lambda: first.counts[OK] == 1, timeout=10)
        # And goes on polling a while after: nothing to wait for, it must get nothing.
        always(lambda: sum(second.counts.values()) == 0, 1.5, "the second consumer got the request")
    finally:
        first.stop()
        if second is not None:
            second.stop()
            second.join(grace=1)
        first.join(grace=1)
    assert len(script.requests) == 1
    assert second is not None and sum(second.counts.values()) == 0
    assert first.heartbeat.extensions >= 4
    assert len(all_bodies(sqs, queues.response)) == 1
    assert depth(sqs, queues.request) == (0, 0)


def test_retry_after_on_a_429_is_obeyed(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.status = 429
    script.headers = {"Retry-After": "2"}
    send_requests(sqs, queues.request, [VALID_ID])
    consumer = running(Consumer(sqs, queues, Settings(maker_url=url, wait_time=0, retry_delay=30)))
    try:
        wait_until(lambda: len(script.requests) == 1)
        script.status, script.headers = 201, {}
        wait_until(lambda: consumer.counts[OK] == 1, timeout=10)
    finally:
        consumer.stop()
        consumer.join(grace=1)
    first, second = (r["at"] for r in script.requests)
    # Retried after the 2 s the maker asked for, not the 30 s retry delay nor at once.
    assert 2.0 <= second - first < 6.0
    [response] = all_bodies(sqs, queues.response)
    assert response["Status"] == OK and response["ReceiveCount"] == 2


def test_max_rate_holds_across_workers(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, url = scripted_maker
    count = 50
    # Every slot any limiter hands out, exactly: the time its clock read (time.monotonic, as the
    # maker's) plus the delay it gave.
    slots: list[float] = []
    read = threading.local()

    def clock() -> float:
        read.now = time.monotonic()
        return float(read.now)

    reserve = RateLimiter.reserve

    def reserved(limiter: RateLimiter) -> float:
        delay = reserve(limiter)
        slots.append(read.now + delay)
        return delay

    monkeypatch.setattr(RateLimiter, "__init__", functools.partialmethod(RateLimiter.__init__, clock=clock))
    monkeypatch.setattr(RateLimiter, "reserve", reserved)
    send_requests(sqs, queues.request, [str(uuid.uuid1()) for _ in range(count)])
    settings = Settings(maker_url=url, wait_time=0, workers=8, max_rate=20)
    consumer = running(Consumer(sqs, queues, settings))
    try:
        wait_until(lambda: depth(sqs, queues.request) == (0, 0) and consumer.outbox.pending() == 0, 30)
    finally:
        consumer.stop()
        consumer.join(grace=1)
    calls = sorted(r["at"] for r in script.requests)
    assert len(calls) >= count and len(slots) == len(calls)  # one slot for every call, at least once
    # The slots the 8 workers were given are 1/20 s apart, one after another: 20 a second at most
    # in any window (exactly so on a fake clock in test_rate_limit.py).
    slots.sort()
    assert min(b - a for a, b in itertools.pairwise(slots)) >= 1 / 20 - 1e-6
    # And no call reached the maker before its slot: the k-th call to arrive came after the k-th
    # slot. (Not "at most 20 calls in any second at the maker": each call arrives a thread wake-up
    # after its slot, which on a busy machine bunches a late call with the next ones.)
    # (So on average no faster than 20 a second at the maker either.)
    assert all(call >= slot - 1e-3 for call, slot in zip(calls, slots, strict=True))
    assert json.loads(script.requests[0]["body"])["widget_id"]
