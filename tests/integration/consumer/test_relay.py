"""The relay's general face on moto's in-process SQS: bodies and attributes forwarded, calls signed."""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from typing import Any

import pytest
from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import sqs_relay
from tests.helpers import WEBHOOK_SECRETS, ScriptedMaker, all_bodies, depth, wait_until
from widgets.consumer import Consumer, Settings, Target
from widgets.consumer.forward import ForwardAdapter, header_value
from widgets.consumer.handling import RetryPolicy
from widgets.consumer.signing import Signer, parse_secrets
from widgets.errors import UsageError
from widgets.messages import FAILED, OK, REJECTED, Received
from widgets.sqs import QueueUrls

SECRETS = WEBHOOK_SECRETS


def received(body: str, attributes: dict[str, Any] | None = None, **changes: Any) -> Received:
    """A received message with body and attributes."""
    message = Received("m-1", "handle-1", body, 2, attributes or {}, 0.0, sent_timestamp="1764547200000")
    return replace(message, **changes)


def test_a_signature_verifies_with_the_reference_library_for_each_secret() -> None:
    signer = Signer(parse_secrets(" ".join(SECRETS)))
    body = '{"Widget": "grüße"}'.encode()
    headers = signer.headers("msg_1", body)
    for secret in SECRETS:  # either secret verifies during a rotation
        Webhook(secret).verify(body.decode(), headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRETS[0]).verify(body.decode() + " ", headers, json_parse=False)
    late = Signer(parse_secrets(SECRETS[0]), clock=lambda: time.time() - 360).headers("msg_1", body)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRETS[0]).verify(body.decode(), late, json_parse=False)


@pytest.mark.parametrize(
    ("value", "why"), [("no-prefix", "does not start with whsec_"), ("whsec_", "is not base64")]
)
def test_a_bad_secret_is_a_usage_error(value: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_secrets(f"{SECRETS[0]} {value}")


def test_attributes_and_sqs_facts_become_headers() -> None:
    attributes = {
        "ContentType": {"DataType": "String", "StringValue": "text/plain; charset=utf-8"},
        "traceparent": {
            "DataType": "String",
            "StringValue": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        },
        "tracestate": {"DataType": "String", "StringValue": "rojo=00f067aa0ba902b7"},
        "Customer": {"DataType": "String", "StringValue": "Zoë"},
        "Priority": {"DataType": "Number", "StringValue": "3"},
        "Blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        "OriginalMessageId": {"DataType": "String", "StringValue": "first-id"},
    }
    adapter = ForwardAdapter(headers={"Authorization": "Bearer t"})
    call = adapter.request(received("héllo", attributes, group_id="g-1"))
    assert call.body == "héllo".encode()
    assert call.request_id == "first-id"  # the id it was first sent with, for webhook-id
    assert call.headers == {
        "Content-Type": "text/plain; charset=utf-8",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "rojo=00f067aa0ba902b7",
        "X-SQS-Attribute-Customer": "Zo%C3%AB",
        "X-SQS-Attribute-Priority": "3",
        "X-SQS-Message-Id": "m-1",
        "X-SQS-Receive-Count": "2",
        "X-SQS-Sent-Timestamp": "1764547200000",
        "X-SQS-Group-Id": "g-1",
        "Authorization": "Bearer t",
    }
    assert adapter.request(received("{}")).headers["Content-Type"] == "application/json"
    assert header_value("a\r\nInjected: 1") == "a%0D%0AInjected: 1"


def test_retry_schedules() -> None:
    assert [RetryPolicy(retry_delay=2, backoff="exponential").delay(n) for n in (1, 2, 3)] == [2, 4, 8]
    assert [RetryPolicy(delays=(1, 10, 60)).delay(n) for n in (1, 2, 3, 4, 9)] == [1, 10, 60, 60, 60]
    rng = random.Random(7)
    drawn = [RetryPolicy(retry_delay=10, backoff="jitter").delay(3, rng) for _ in range(500)]
    assert min(drawn) >= 0 and max(drawn) <= 40  # full jitter: between 0 and the exponential bound
    assert len(set(drawn)) > 30  # spread, not one value
    with pytest.raises(UsageError, match="comma-separated") as refused:
        Settings(retry_delays="1,ten")
    assert refused.value.option == "--retry-delays"


def relay(url: str, adapter: ForwardAdapter | None = None) -> Target:
    """The general face toward url (the scripted stand-in service)."""
    return Target(url, adapter or ForwardAdapter(), "POST", None, "target")


def test_bodies_arrive_byte_for_byte_signed_and_outcomes_are_reported(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.status_for = lambda body: 422 if b"reject" in body else (500 if b"doomed" in body else 200)
    bodies = [json.dumps({"n": n, "text": "grüße, 東京, 🚀"}, ensure_ascii=False) for n in range(20)]
    plain = "plain text, ünïcödé"
    for body in bodies:
        sqs.send_message(QueueUrl=queues.request, MessageBody=body)
    sqs.send_message(
        QueueUrl=queues.request,
        MessageBody=plain,
        MessageAttributes={"ContentType": {"DataType": "String", "StringValue": "text/plain; charset=utf-8"}},
    )
    sqs.send_message(QueueUrl=queues.request, MessageBody='{"reject": true}')
    sqs.send_message(QueueUrl=queues.request, MessageBody='{"doomed": true}')
    keys = tuple(parse_secrets(" ".join(SECRETS)))
    settings = Settings(wait_time=0, max_receives=2, retry_delay=0, visibility_timeout=2, signing_keys=keys)
    consumer = Consumer(sqs, queues, settings, target=relay(url))
    consumer.start()
    try:
        wait_until(
            lambda: depth(sqs, queues.request) == (0, 0) and consumer.outbox.pending() == 0, timeout=20
        )
    finally:
        consumer.stop()
        consumer.join(grace=1)
    arrived = {r["body"]: r["headers"] for r in script.requests}
    for body in [*bodies, plain]:
        headers = arrived[body.encode()]
        for secret in SECRETS:
            Webhook(secret).verify(body, headers, json_parse=False)
        assert headers["Idempotency-Key"] == headers["webhook-id"] == headers["X-SQS-Message-Id"]
    assert arrived[plain.encode()]["Content-Type"] == "text/plain; charset=utf-8"
    assert arrived[bodies[0].encode()]["Content-Type"] == "application/json"
    reports = {r["MessageId"]: r for r in all_bodies(sqs, queues.response)}
    by_status = {
        status: [r for r in reports.values() if r["Status"] == status] for status in (OK, REJECTED, FAILED)
    }
    assert len(by_status[OK]) == 21 and {r["StatusCode"] for r in by_status[OK]} == {200}
    [rejected] = by_status[REJECTED]
    assert (rejected["StatusCode"], rejected["Body"]) == (422, '{"error": "scripted"}')
    assert rejected["Reason"] == "target answered 422: scripted"
    [failed] = by_status[FAILED]
    assert (failed["StatusCode"], failed["ReceiveCount"]) == (500, 2)
    [kept] = all_bodies(sqs, queues.dead_letter)
    assert kept["doomed"] is True
    assert "WidgetId" not in failed


def test_without_a_response_queue_nothing_is_reported_and_all_is_settled(
    sqs: Any, queues: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    for n in range(5):
        sqs.send_message(QueueUrl=queues.request, MessageBody=f"message {n}")
    consumer = Consumer(sqs, replace(queues, response=None), Settings(wait_time=0), target=relay(url))
    consumer.start()
    try:
        wait_until(lambda: depth(sqs, queues.request) == (0, 0) and consumer.outbox.pending() == 0)
    finally:
        consumer.stop()
        consumer.join(grace=1)
    assert sorted(r["body"] for r in script.requests) == [f"message {n}".encode() for n in range(5)]
    assert all_bodies(sqs, queues.response) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--header", "no colon"], "'no colon' is not a header"),
        (["--target-url", "ftp://x"], "is not an http(s) URL"),
        (["--retry-delays", "1,x"], "Invalid value for '--retry-delays'"),
    ],
)
def test_relay_mistakes_are_one_line(args: list[str], message: str) -> None:
    base = ["--queue", "Orders", "--target-url", "http://127.0.0.1:1/hook"]
    result = CliRunner().invoke(sqs_relay.main, [*base, *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_a_secret_on_the_command_line_is_not_an_option_and_a_bad_one_in_the_environment_is_one_line() -> None:
    options = {param.name for param in sqs_relay.main.params}
    assert not {"secret", "webhook_secret", "signing_keys"} & options
    result = CliRunner().invoke(
        sqs_relay.main,
        ["--queue", "Orders", "--target-url", "http://127.0.0.1:1/hook"],
        env={"WEBHOOK_SECRET": "oops"},
    )
    assert result.exit_code == 2
    assert "WEBHOOK_SECRET: secret 1 does not start with whsec_" in result.output
