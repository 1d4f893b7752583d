"""A maker outage of any length costs nothing: breaker, Retry-After, heartbeat and rate limit, on moto."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from devtools.stack import free_port
from tests.helpers import ScriptedMaker, all_bodies, depth, serve_in_thread, wait_until
from widgets.consumer import Consumer, Settings
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
    send_requests(sqs, queues.request, [str(uuid.uuid1()) for _ in range(count)])
    # Two receives: five retry windows of 1 s are 10 s, and a request whose failure were counted
    # during the outage would end FAILED sooner.
    settings = Settings(
        maker_url=switchable.url, max_receives=2, retry_delay=1, wait_time=0, workers=4, visibility_timeout=5
    )
    receives_started: list[float] = []
    real_receive = sqs.receive_message

    def receive(**kwargs: Any) -> Any:
        receives_started.append(time.monotonic())
        return real_receive(**kwargs)

    sqs.receive_message = receive
    consumer = running(Consumer(sqs, queues, settings))
    try:
        wait_until(lambda: consumer.breaker.state == "open")
        opened = time.monotonic()  # a receive under way now may still end; none may start
        time.sleep(5 * settings.max_receives * settings.retry_delay)  # the outage
        receives_in_outage = sum(started > opened for started in receives_started)
        switchable.up()
        wait_until(lambda: consumer.counts[OK] == count, timeout=60)
    finally:
        consumer.stop()
        assert consumer.join(grace=1) == 0
    assert consumer.counts[FAILED] == 0
    # No receive while the breaker is open: only probes of /healthz.
    assert receives_in_outage == 0
    assert all_bodies(sqs, queues.dead_letter) == []
    statuses = [r["Status"] for r in all_bodies(sqs, queues.response)]
    assert statuses.count(OK) == count and len(statuses) == count
    assert switchable.app.extensions["widget_store"].count() == count


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
        time.sleep(1.5)
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
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    count = 50
    send_requests(sqs, queues.request, [str(uuid.uuid1()) for _ in range(count)])
    settings = Settings(maker_url=url, wait_time=0, workers=8, max_rate=20)
    consumer = running(Consumer(sqs, queues, settings))
    try:
        wait_until(lambda: consumer.counts[OK] == count, timeout=20)
    finally:
        consumer.stop()
        consumer.join(grace=1)
    times = sorted(r["at"] for r in script.requests)
    assert len(times) == count
    # The limiter's slots are exactly 1/20 s apart (test_rate_limit.py, on a fake clock); here each
    # call reaches the maker a thread wake-up after its slot, which on a busy machine can be this
    # late, and one late call can share a window with the calls of the slots after it.
    late = 0.15
    # In any one second, at most 20 calls (21 counting one at each edge of the window), and those
    # whose slots came in the 0.15 s before it but were late.
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 21 + round(20 * late)
    # And on average no faster than 20 a second: the 50 slots span 49/20 s, less the first's lateness.
    assert times[-1] - times[0] >= (count - 1) / 20 - late
    assert json.loads(script.requests[0]["body"])["widget_id"]
