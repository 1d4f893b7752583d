"""The consumer's decision for every row of the outcome table, its batching, retries and stop, on moto."""

from __future__ import annotations

import atexit
import json
import logging
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from devtools.stack import free_port
from tests.helpers import ScriptedMaker, all_bodies, depth, receive_one, received, wait_until
from widgets.consumer import Consumer, Settings
from widgets.consumer import outbox as outbox_module
from widgets.consumer.handling import RetryPolicy
from widgets.consumer.maker_client import MakerClient
from widgets.consumer.outbox import Outbox
from widgets.messages import FAILED, OK, REJECTED, RETRY, request_body
from widgets.producer import send_requests
from widgets.sqs import QueueUrls

VALID_ID = "31f37378-54f4-11e5-ad75-3c970e65f731"


def handle_one(
    sqs: Any, queues: QueueUrls, settings: Settings, body: str, receives: int = 1
) -> tuple[str, Any]:
    """Send body, receive it receives times, have a consumer handle the last delivery; return the outcome."""
    sqs.send_message(QueueUrl=queues.request, MessageBody=body)
    for _ in range(receives - 1):
        message = receive_one(sqs, queues.request)
        sqs.change_message_visibility(
            QueueUrl=queues.request, ReceiptHandle=message.receipt_handle, VisibilityTimeout=0
        )
    consumer = Consumer(sqs, queues, settings)
    outcome = consumer.handle(receive_one(sqs, queues.request))
    assert consumer.outbox.flush() == 0
    return outcome.status, outcome


def test_ok_sends_response_and_deletes(sqs: Any, queues: QueueUrls, maker_url: str) -> None:
    status, _ = handle_one(sqs, queues, Settings(maker_url=maker_url), request_body(VALID_ID))
    assert status == OK
    assert depth(sqs, queues.request) == (0, 0)
    [response] = all_bodies(sqs, queues.response)
    assert response["Status"] == OK
    assert response["WidgetId"] == VALID_ID
    assert response["ReceiveCount"] == 1
    assert response["Widget"]["widget_id"] == VALID_ID


def test_repeated_request_is_ok_and_made_once(sqs: Any, queues: QueueUrls, maker_url: str, app: Any) -> None:
    settings = Settings(maker_url=maker_url)
    assert handle_one(sqs, queues, settings, request_body(VALID_ID))[0] == OK
    assert handle_one(sqs, queues, settings, request_body(VALID_ID))[0] == OK
    first, second = all_bodies(sqs, queues.response)
    assert first["Widget"] == second["Widget"]
    assert app.extensions["widget_store"].count() == 1


def test_maker_rejection_is_rejected_without_retry(sqs: Any, queues: QueueUrls, maker_url: str) -> None:
    status, outcome = handle_one(
        sqs, queues, Settings(maker_url=maker_url), request_body("this_is_not_a_valid_widget_id")
    )
    assert status == REJECTED
    assert "maker answered 422" in outcome.reason
    assert depth(sqs, queues.request) == (0, 0)
    [response] = all_bodies(sqs, queues.response)
    assert response["Status"] == REJECTED
    assert "422" in response["Reason"]
    assert all_bodies(sqs, queues.dead_letter) == []


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        "{}",
        '{"WidgetId": 5}',
        '{"WidgetId": "' + "x" * 1000 + '"}',
        "x" * 100_000,
        "é✓\u2028",
    ],
)
def test_invalid_body_is_rejected_without_calling_the_maker(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str], body: str
) -> None:
    script, url = scripted_maker
    status, _ = handle_one(sqs, queues, Settings(maker_url=url), body)
    assert status == REJECTED
    assert script.requests == []
    assert depth(sqs, queues.request) == (0, 0)
    [response] = all_bodies(sqs, queues.response)
    assert response["Status"] == REJECTED and response["WidgetId"] is None and response["Reason"]


def test_maker_down_is_retried_uncounted_when_the_breaker_probes(sqs: Any, queues: QueueUrls) -> None:
    settings = Settings(maker_url=f"http://127.0.0.1:{free_port()}/add", retry_delay=1)
    status, outcome = handle_one(sqs, queues, settings, request_body(VALID_ID), receives=3)
    # Unreachable is the maker's outage, not the request's failure: never FAILED, even on its
    # last delivery, and retried when the breaker next probes (0.5 s, rounded up to 1 s).
    assert status == RETRY
    assert outcome.reason == "maker unreachable; maker down, not counted"
    assert outcome.delay == 1
    assert depth(sqs, queues.request) == (0, 1)
    assert all_bodies(sqs, queues.response) == []
    assert all_bodies(sqs, queues.dead_letter) == []
    again = receive_one(sqs, queues.request, wait=3)
    assert again.receive_count == 4


def test_an_outage_never_lets_the_redrive_policy_take_a_request(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.status = 503
    settings = Settings(maker_url=url, max_receives=3)
    # On the delivery before SQS's redrive limit (max receives + 2), a request the maker's
    # outage keeps bouncing is sent afresh, with its original id, and the old copy deleted.
    sqs.send_message(QueueUrl=queues.request, MessageBody=request_body(VALID_ID))
    first_id = None
    for _ in range(3):
        message = receive_one(sqs, queues.request)
        first_id = message.message_id
        sqs.change_message_visibility(
            QueueUrl=queues.request, ReceiptHandle=message.receipt_handle, VisibilityTimeout=0
        )
    consumer = Consumer(sqs, queues, settings)
    fourth = receive_one(sqs, queues.request)
    assert fourth.receive_count == 4
    assert consumer.handle(fourth).status == RETRY
    assert consumer.outbox.flush() == 0
    fresh = receive_one(sqs, queues.request, wait=2)
    assert fresh.receive_count == 1 and fresh.message_id != first_id
    assert fresh.request_id == first_id
    script.status = 201
    consumer = Consumer(sqs, queues, settings)
    assert consumer.handle(fresh).status == OK
    assert consumer.outbox.flush() == 0
    [response] = all_bodies(sqs, queues.response)
    assert response["MessageId"] == first_id
    assert depth(sqs, queues.request) == (0, 0)
    assert all_bodies(sqs, queues.dead_letter) == []


def test_a_failing_request_is_retried_after_the_delay(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.status = 500
    status, outcome = handle_one(sqs, queues, Settings(maker_url=url, retry_delay=1), request_body(VALID_ID))
    assert status == RETRY
    assert outcome.reason == "maker answered 500: scripted"
    assert outcome.delay == 1
    # The visibility was set to the 1 s retry delay, not the 30 s it was received with.
    again = receive_one(sqs, queues.request, wait=3)
    assert again.receive_count == 2


@pytest.mark.parametrize("code", [500, 502, 503, 408, 429, 401, 403])
def test_maker_failure_answers_are_retried(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str], code: int
) -> None:
    script, url = scripted_maker
    script.status = code
    status, outcome = handle_one(sqs, queues, Settings(maker_url=url), request_body(VALID_ID))
    assert status == RETRY
    assert f"maker answered {code}" in outcome.reason
    assert depth(sqs, queues.request) == (0, 1)


@pytest.mark.parametrize("code", [400, 404, 409, 413, 415, 422])
def test_other_client_errors_are_rejected(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str], code: int
) -> None:
    script, url = scripted_maker
    script.status = code
    assert handle_one(sqs, queues, Settings(maker_url=url), request_body(VALID_ID))[0] == REJECTED


def test_maker_timeout_is_retried(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.delay = 1.0
    status, outcome = handle_one(
        sqs, queues, Settings(maker_url=url, http_timeout=0.2), request_body(VALID_ID)
    )
    assert status == RETRY
    assert "did not answer within 0.2s" in outcome.reason


def test_last_receive_fails_to_the_dead_letter_queue(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.status = 500
    settings = Settings(maker_url=url, max_receives=3)
    status, _outcome = handle_one(sqs, queues, settings, request_body(VALID_ID), receives=3)
    assert status == FAILED
    assert depth(sqs, queues.request) == (0, 0)
    [response] = all_bodies(sqs, queues.response)
    assert response["Status"] == FAILED and response["ReceiveCount"] == 3
    assert "gave up after 3 receives" in response["Reason"]
    [kept] = all_bodies(sqs, queues.dead_letter)
    assert kept["WidgetId"] == VALID_ID
    assert kept["_attributes"]["ReceiveCount"] == "3"
    assert kept["_attributes"]["OriginalMessageId"] == response["MessageId"]
    assert "maker answered 500" in kept["_attributes"]["FailureReason"]


def test_consumer_sends_idempotency_key_and_token(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    handle_one(sqs, queues, Settings(maker_url=url, token="s3cret"), request_body(VALID_ID))
    [request] = script.requests
    assert json.loads(request["body"]) == {"widget_id": VALID_ID}
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    assert request["headers"]["Idempotency-Key"]


@pytest.mark.parametrize(
    ("backoff", "counts", "delays"),
    [
        ("fixed", [1, 2, 5], [30, 30, 30]),
        ("exponential", [1, 2, 3, 4], [30, 60, 120, 240]),
        ("exponential", [30, 500], [43200, 43200]),
    ],
)
def test_retry_delay(backoff: str, counts: list[int], delays: list[int]) -> None:
    policy = RetryPolicy(retry_delay=30, backoff=backoff)
    assert [policy.delay(c) for c in counts] == delays


def outbox_holding_answers(sqs: Any, queues: QueueUrls, count: int) -> Outbox:
    """Send and receive count requests; return an outbox holding a response and delete for each."""
    outbox = Outbox(sqs, queues, flush_interval=0)
    for message in received(sqs, queues.request, count):
        outbox.respond_and_delete(message, json.dumps({"MessageId": message.message_id}))
    return outbox


def refusing_the_first(call: Any) -> Any:
    """Wrap a batch call so SQS refuses its first entry (an internal error) and does the rest."""

    def refuse(**kwargs: Any) -> Any:
        entries = kwargs["Entries"]
        answer = call(QueueUrl=kwargs["QueueUrl"], Entries=entries[1:])
        answer["Failed"] = [{"Id": entries[0]["Id"], "SenderFault": False, "Code": "InternalError"}]
        return answer

    return refuse


def test_outbox_keeps_what_sqs_refused(sqs: Any, queues: QueueUrls, monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = outbox_holding_answers(sqs, queues, 3)
    real_delete = sqs.delete_message_batch
    monkeypatch.setattr(sqs, "delete_message_batch", refusing_the_first(real_delete))
    assert outbox.flush() > 0  # a pause before trying the refused entry again
    assert outbox.pending() == 1  # the refused delete waits for the next flush
    assert depth(sqs, queues.request) == (0, 1)
    monkeypatch.setattr(sqs, "delete_message_batch", real_delete)
    assert outbox.flush() == 0
    assert outbox.pending() == 0
    assert depth(sqs, queues.request) == (0, 0)
    assert len(all_bodies(sqs, queues.response)) == 3


def batch_calls(sqs: Any) -> list[tuple[str, int, float]]:
    """Record each batch write the client makes: (operation, entries, when)."""
    calls: list[tuple[str, int, float]] = []

    def record(params: dict[str, Any], model: Any, **kwargs: Any) -> None:
        if model.name.endswith("Batch"):
            calls.append((model.name, len(params["Entries"]), time.monotonic()))

    sqs.meta.events.register("provide-client-params.sqs", record)
    return calls


def test_a_flush_for_a_full_batch_leaves_the_rest_until_its_interval(sqs: Any, queues: QueueUrls) -> None:
    outbox = Outbox(sqs, queues, flush_interval=0.5)
    for message in received(sqs, queues.request, 13):
        outbox.respond_and_delete(message, "{}")
    calls = batch_calls(sqs)
    started = time.monotonic()
    outbox.start()
    wait_until(lambda: outbox.pending() == 0, timeout=5)
    outbox.close(1)
    assert [(name, size) for name, size, _ in calls] == [
        ("SendMessageBatch", 10),
        ("DeleteMessageBatch", 10),
        ("SendMessageBatch", 3),
        ("DeleteMessageBatch", 3),
    ]
    assert calls[1][2] - started < 0.4 <= calls[2][2] - started  # the full batch at once, the rest later
    assert depth(sqs, queues.request) == (0, 0)


def test_full_batches_do_not_hold_back_a_part_filled_one(sqs: Any, queues: QueueUrls) -> None:
    messages = received(sqs, queues.request, 13)
    outbox = Outbox(sqs, queues, flush_interval=0.3)
    calls = batch_calls(sqs)
    outbox.start()
    for message in messages[10:]:
        outbox.change_visibility(message, 0)  # three hand-backs, never a full batch
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # full batches of responses, steadily
        for message in messages[:10]:
            outbox.respond_and_delete(message, "{}")
        time.sleep(0.05)
    outbox.close(2)
    [changed_at] = [at for name, _, at in calls if name == "ChangeMessageVisibilityBatch"]
    assert changed_at - started < 1.0  # within about its interval, not after the stream
    assert any(name == "SendMessageBatch" and at > changed_at for name, _, at in calls)


def test_outbox_deletes_nothing_whose_response_was_not_sent(
    sqs: Any, queues: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs.send_message(QueueUrl=queues.request, MessageBody="x")
    message = receive_one(sqs, queues.request)
    outbox = Outbox(sqs, queues, flush_interval=0)
    outbox.respond_and_delete(message, "{}")

    def unreachable(**kwargs: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    real_send = sqs.send_message_batch
    monkeypatch.setattr(sqs, "send_message_batch", unreachable)
    assert outbox.flush() > 0
    assert outbox.flush() > 0
    assert depth(sqs, queues.request) == (0, 1)
    monkeypatch.setattr(sqs, "send_message_batch", real_send)
    assert outbox.flush() == 0
    assert depth(sqs, queues.request) == (0, 0)


def test_partial_response_batch_failure_keeps_the_request(
    sqs: Any, queues: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = outbox_holding_answers(sqs, queues, 2)
    real_send = sqs.send_message_batch
    monkeypatch.setattr(sqs, "send_message_batch", refusing_the_first(real_send))
    outbox.flush()
    assert depth(sqs, queues.request) == (0, 1)  # the one without a response is not deleted
    monkeypatch.setattr(sqs, "send_message_batch", real_send)
    outbox.flush()
    outbox.flush()
    assert depth(sqs, queues.request) == (0, 0)
    assert len(all_bodies(sqs, queues.response)) == 2


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
        wait_until(lambda: depth(sqs, queues.request) == (0, 0) and consumer.outbox.pending() == 0)
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
        wait_until(lambda: calls["failed"] >= 2)
        monkeypatch.setattr(sqs, "receive_message", real_receive)
        sqs.send_message(QueueUrl=queues.request, MessageBody=request_body(VALID_ID))
        wait_until(lambda: consumer.counts[OK] == 1, timeout=15)
    finally:
        consumer.stop()
        consumer.join(grace=1)
    outage_lines = [r for r in caplog.records if "sqs_outage" in r.getMessage()]
    assert len(outage_lines) == 1  # once per outage, not once per failed call
    assert any("sqs_recovered" in r.getMessage() for r in caplog.records)


def test_background_log_lines_are_the_same_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from widgets.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("widgets.test").exception("worker_error message_id=m1")
        writer = configure_logging("INFO", "json", background=True)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("widgets.test").exception("worker_error message_id=m1")
        assert writer is not None
        writer.stop()
        atexit.unregister(writer.stop)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    direct, queued = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    for entry in (direct, queued):
        del entry["time"]
        assert "ValueError: boom" in entry.pop("exception")
    assert (
        direct
        == queued
        == {"level": "ERROR", "logger": "widgets.test", "message": "worker_error message_id=m1"}
    )


@pytest.mark.parametrize("background", [False, True], ids=["written-by-the-caller", "written-in-background"])
def test_json_log_lines_carry_the_fields(
    sqs: Any, queues: QueueUrls, maker_url: str, capsys: pytest.CaptureFixture[str], background: bool
) -> None:
    from widgets.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    writer = configure_logging("INFO", "json", background=background)
    assert (writer is not None) == background
    try:
        handle_one(sqs, queues, Settings(maker_url=maker_url), request_body(VALID_ID))
    finally:
        if writer is not None:
            writer.stop()  # writes out what is queued, as at exit
            atexit.unregister(writer.stop)
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [
        json.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if '"widgets.consumer.handling"' in line
    ]
    [entry] = lines
    assert entry["status"] == OK
    assert entry["widget_id"] == VALID_ID
    assert entry["receive_count"] == 1
    assert entry["message_id"] and isinstance(entry["duration_ms"], float)
    assert entry["level"] == "INFO"


def test_failed_flush_keeps_hand_backs(sqs: Any, queues: QueueUrls, monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = outbox_holding_answers(sqs, queues, 1)
    sqs.send_message(QueueUrl=queues.request, MessageBody="to hand back")
    outbox.change_visibility(receive_one(sqs, queues.request), 0)

    def unreachable(**kwargs: Any) -> Any:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    real_send = sqs.send_message_batch
    monkeypatch.setattr(sqs, "send_message_batch", unreachable)
    assert outbox.flush() > 0
    # The responses could not go, but the hand-back did: the message is visible at once.
    assert depth(sqs, queues.request) == (1, 1)
    assert outbox.pending() == 1
    monkeypatch.setattr(sqs, "send_message_batch", real_send)
    assert outbox.flush() == 0
    assert outbox.pending() == 0


def test_a_failed_dead_letter_copy_is_kept_before_the_delete(
    sqs: Any, queues: QueueUrls, monkeypatch: pytest.MonkeyPatch, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.status = 500
    consumer = Consumer(sqs, queues, Settings(maker_url=url, max_receives=1))
    sqs.send_message(QueueUrl=queues.request, MessageBody=request_body(VALID_ID))
    real_send = sqs.send_message_batch

    def dead_letter_queue_down(**kwargs: Any) -> Any:
        if kwargs["QueueUrl"] == queues.dead_letter:
            raise EndpointConnectionError(endpoint_url="x")
        return real_send(**kwargs)

    monkeypatch.setattr(sqs, "send_message_batch", dead_letter_queue_down)
    assert consumer.handle(receive_one(sqs, queues.request)).status == FAILED
    assert consumer.outbox.flush() == 1
    [response] = all_bodies(sqs, queues.response)
    assert response["Status"] == FAILED
    assert depth(sqs, queues.request) == (0, 1)  # not deleted without its dead-letter copy
    monkeypatch.setattr(sqs, "send_message_batch", real_send)
    assert consumer.outbox.flush() == 0
    [kept] = all_bodies(sqs, queues.dead_letter)
    assert kept["_attributes"]["ReceiveCount"] == "1"
    assert depth(sqs, queues.request) == (0, 0)


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
        for _ in range(4):
            time.sleep(0.5)
            assert depth(sqs, queues.request) == (0, 1)
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
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert sqs.receive_message(QueueUrl=queues.request, WaitTimeSeconds=0).get("Messages") is None
            time.sleep(0.25)
        assert consumer.outbox.pending() == 1
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
    consumer.start()
    try:
        wait_until(lambda: consumer.outbox.behind())
        wait_until(lambda: any("settling_behind" in r.getMessage() for r in caplog.records))
        receives = consumer.receiver.receives
        made = consumer.counts[OK]
        time.sleep(1)  # receiving stays paused: no receive, nothing more made
        assert (consumer.receiver.receives, consumer.counts[OK]) == (receives, made)
        assert made <= 5 + consumer.dispatcher.capacity
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

    monkeypatch.setattr(MakerClient, "create", broken)
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
