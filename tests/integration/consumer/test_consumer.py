"""The consumer's decision for every row of the outcome table, its batching, retries and stop, on moto."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from tests.helpers import CheckedCalls, ScriptedMaker, all_bodies, always, depth, wait_until
from widgets.consumer import Consumer, Settings
from widgets.consumer import outbox as outbox_module
from widgets.consumer.maker_client import MakerClient
from widgets.messages import FAILED, OK, REJECTED, request_body
from widgets.producer import send_requests
from widgets.sqs import QueueUrls

VALID_ID = "31f37378-54f4-11e5-ad75-3c970e65f731"


def test_consumer_drains_the_queue_concurrently(
    sqs: Any, queues: QueueUrls, maker_url: str, app: Any
) -> None:
    widget_ids = {str(uuid.uuid1()) for _ in range(30)}
    send_requests(sqs, queues.request, sorted(widget_ids))
    sqs.send_message(QueueUrl=queues.request, MessageBody="garbage")
    consumer = Consumer(sqs, queues, Settings(maker_url=maker_url, wait_time=0, workers=4))
    consumer.start()
    try:
        # At least once: a request may be delivered (and answered) twice, never lost.
        wait_until(lambda: depth(sqs, queues.request) == (0, 0) and consumer.outbox.pending() == 0, 30)
    finally:
        consumer.stop()
        assert consumer.join(grace=1) == 0
    responses = all_bodies(sqs, queues.response)
    assert {r["WidgetId"] for r in responses if r["Status"] == OK} == widget_ids
    assert {r["Status"] for r in responses if r["WidgetId"] not in widget_ids} == {REJECTED}
    assert app.extensions["widget_store"].count() == 30  # each made once


def test_stop_finishes_held_messages_and_hands_back_the_rest(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.delay = 0.5
    send_requests(sqs, queues.request, [VALID_ID] * 6)
    consumer = Consumer(sqs, queues, Settings(maker_url=url, wait_time=0, workers=1, batch_size=6))
    consumer.start()
    wait_until(lambda: len(script.requests) == 1)
    consumer.stop()
    assert consumer.join(grace=1) == 0
    # The one in the maker's hands was finished; the ones held but not started are visible at once.
    assert consumer.counts[OK] == 1
    assert len(script.requests) == 1
    assert depth(sqs, queues.request) == (5, 0)
    assert len(all_bodies(sqs, queues.response)) == 1


def test_consumer_rides_out_an_sqs_outage(
    sqs: Any,
    queues: QueueUrls,
    maker_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    consumer = Consumer(sqs, queues, Settings(maker_url=maker_url, wait_time=0, workers=2))
    real_receive = sqs.receive_message
    calls = {"failed": 0}

    def down(**kwargs: Any) -> Any:
        calls["failed"] += 1
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    monkeypatch.setattr(sqs, "receive_message", down)
    consumer.start()
    try:
        wait_until(lambda: any("sqs_outage" in r.getMessage() for r in caplog.records))  # after a second
        monkeypatch.setattr(sqs, "receive_message", real_receive)
        sqs.send_message(QueueUrl=queues.request, MessageBody=request_body(VALID_ID))
        wait_until(lambda: consumer.counts[OK] == 1, timeout=15)
    finally:
        consumer.stop()
        consumer.join(grace=1)
    outage_lines = [r for r in caplog.records if "sqs_outage" in r.getMessage()]
    assert len(outage_lines) == 1  # once per outage, not once per failed call
    assert any("sqs_recovered" in r.getMessage() for r in caplog.records)


def test_heartbeat_keeps_a_slow_call_invisible(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.delay = 2.5
    send_requests(sqs, queues.request, [VALID_ID])
    # A 2.5 s maker call with a 1 s visibility timeout: the heartbeat extends it meanwhile,
    # so nobody else can receive the request, and it is made and answered once.
    settings = Settings(maker_url=url, wait_time=0, workers=1, http_timeout=10, visibility_timeout=1)
    consumer = Consumer(sqs, queues, settings)
    consumer.start()
    try:
        wait_until(lambda: len(script.requests) == 1)
        # Two visibility timeouts into the call, it has never been visible to another consumer.
        always(lambda: depth(sqs, queues.request)[0] == 0, 2, "the request became visible")
        wait_until(lambda: consumer.counts[OK] == 1)
    finally:
        consumer.stop()
        consumer.join(grace=1)
    assert len(script.requests) == 1
    assert consumer.heartbeat.extensions >= 3


def test_a_request_is_held_until_sqs_confirms_its_delete(
    sqs: Any, queues: QueueUrls, maker_url: str, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    send_requests(sqs, queues.request, [VALID_ID])
    real_delete = sqs.delete_message_batch

    def delete_times_out(**kwargs: Any) -> Any:
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9")

    monkeypatch.setattr(sqs, "delete_message_batch", delete_times_out)
    settings = Settings(maker_url=maker_url, wait_time=0, workers=1, visibility_timeout=2)
    consumer = Consumer(sqs, queues, settings)
    consumer.start()
    try:
        wait_until(lambda: consumer.counts[OK] == 1)
        # Answered, its delete failing for two and a half visibility timeouts: the heartbeat
        # keeps it hidden, so no other consumer gets it, and it is neither made nor answered again.
        always(
            lambda: sqs.receive_message(QueueUrl=queues.request, WaitTimeSeconds=0).get("Messages") is None,
            5,
            "another consumer could receive the request",
            pause=0.25,
        )
        # Still held, its delete still unconfirmed (a heartbeat's extension may be pending beside it).
        assert consumer.heartbeat.held() == 1 and consumer.outbox.pending() >= 1
        monkeypatch.setattr(sqs, "delete_message_batch", real_delete)
        wait_until(lambda: consumer.outbox.pending() == 0)
    finally:
        consumer.stop()
        consumer.join(grace=1)
    assert depth(sqs, queues.request) == (0, 0)
    assert len(all_bodies(sqs, queues.response)) == 1
    assert consumer.heartbeat.extensions >= 2
    assert consumer.heartbeat.held() == 0


def test_receiving_pauses_while_settling_lags_behind(
    sqs: Any,
    queues: QueueUrls,
    maker_url: str,
    app: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(outbox_module, "MAX_UNSETTLED", 5)
    widget_ids = [str(uuid.uuid1()) for _ in range(40)]
    send_requests(sqs, queues.request, widget_ids)
    real_send = sqs.send_message_batch

    def responses_fail(**kwargs: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    monkeypatch.setattr(sqs, "send_message_batch", responses_fail)
    consumer = Consumer(sqs, queues, Settings(maker_url=maker_url, wait_time=0, workers=2))
    # Receives, each with when its thread last asked whether settling is behind.
    receives = CheckedCalls()
    monkeypatch.setattr(sqs, "receive_message", receives.action(sqs.receive_message))
    consumer.receiver.behind = receives.check(consumer.receiver.behind)
    consumer.start()
    try:
        wait_until(lambda: consumer.outbox.behind())
        wait_until(lambda: any("settling_behind" in r.getMessage() for r in caplog.records))
        paused = time.monotonic()
        # Receiving stays paused: for a second, no receive begun on a check made since (one that
        # passed its check just before may still begin; the requests held may still be made).
        always(lambda: receives.after(paused) == 0, 1, "a receive while settling was behind")
        assert consumer.counts[OK] <= 5 + consumer.dispatcher.capacity
        monkeypatch.setattr(sqs, "send_message_batch", real_send)
        wait_until(lambda: consumer.counts[OK] >= 40 and consumer.outbox.pending() == 0, timeout=20)
    finally:
        consumer.stop()
        consumer.join(grace=1)
    assert {r["WidgetId"] for r in all_bodies(sqs, queues.response)} == set(widget_ids)
    # Logged when it starts and when it ends (with so low a bound, normal work crosses it again).
    lines = [r.getMessage()[:16] for r in caplog.records if "settling_" in r.getMessage()]
    assert lines[:2] == ["settling_behind:", "settling_caught_"]
    assert (
        lines == ["settling_behind:", "settling_caught_"] * (len(lines) // 2) + lines[len(lines) // 2 * 2 :]
    )
    assert lines[len(lines) // 2 * 2 :] in ([], ["settling_behind:"])


def test_a_message_the_consumer_keeps_failing_on_ends_failed(
    sqs: Any, queues: QueueUrls, maker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(MakerClient, "send", broken)
    consumer = Consumer(sqs, queues, Settings(maker_url=maker_url, wait_time=0, max_receives=1))
    sqs.send_message(QueueUrl=queues.request, MessageBody=request_body(VALID_ID))
    consumer.start()
    try:
        wait_until(lambda: consumer.counts[FAILED] == 1)
    finally:
        consumer.stop()
        assert consumer.join(grace=1) == 0
    [response] = all_bodies(sqs, queues.response)
    assert response["Status"] == FAILED
    assert response["Reason"].startswith("consumer error: RuntimeError")
    assert len(all_bodies(sqs, queues.dead_letter)) == 1
    assert depth(sqs, queues.request) == (0, 0)
