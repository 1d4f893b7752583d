"""One message's path (widgets/consumer/handling.py), on moto: every row of the outcome table,
retries, dead letters and its log line."""

from __future__ import annotations

import atexit
import json
import logging
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from devtools.stack import free_port
from tests.helpers import ScriptedMaker, all_bodies, depth, receive_one
from widgets.consumer import Consumer, Settings
from widgets.consumer.handling import RetryPolicy
from widgets.messages import FAILED, OK, REJECTED, RETRY, request_body
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


@pytest.mark.parametrize("code", [500, 502, 503, 401, 403, 407, 408, 409, 429])
def test_maker_failure_answers_are_retried(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str], code: int
) -> None:
    script, url = scripted_maker
    script.status = code
    status, outcome = handle_one(sqs, queues, Settings(maker_url=url), request_body(VALID_ID))
    assert status == RETRY
    assert f"maker answered {code}" in outcome.reason
    assert depth(sqs, queues.request) == (0, 1)


@pytest.mark.parametrize("code", [400, 404, 410, 413, 415, 422])
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
