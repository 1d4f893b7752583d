"""The consumer's Prometheus metrics: what is pushed, what is read when scraped, and a real run's counts."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from devtools.stack import free_port
from tests.helpers import Samples, by_label, scrape, wait_until
from widgets.consumer import Consumer, Settings
from widgets.consumer.metrics import ConsumerMetrics
from widgets.consumer.observer import Observer, Snapshot
from widgets.messages import OK, REJECTED
from widgets.producer import send_requests
from widgets.sqs import QueueUrls, watch_calls


def rendered(metrics: ConsumerMetrics) -> Samples:
    """Scrape metrics as Prometheus would, in its text format."""
    body, content_type = metrics.render(None)
    assert content_type.startswith("text/plain")
    return scrape(body.decode())


def snapshot(**changes: Any) -> Snapshot:
    """Return a snapshot of an idle consumer, with changes."""
    values: dict[str, Any] = {
        "outcomes": Counter(),
        "held": 0,
        "maker_calls_in_flight": 0,
        "outbox_backlog": 0,
        "outbox_oldest_seconds": 0.0,
        "breaker_state": "closed",
        "breaker_opened": 0,
        "breaker_open_seconds": 0.0,
        "heartbeat_extensions": 0,
        "rate_limit_waits": 0,
        "rate_limit_wait_seconds": 0.0,
        "last_receive": None,
    }
    return Snapshot(**{**values, **changes})


def test_events_are_counted_by_bounded_labels() -> None:
    metrics = ConsumerMetrics()
    for code, no_answer, seconds in [
        (201, None, 0.002),
        (201, None, 0.004),
        (200, None, 0.003),
        (500, None, 0.02),
        (None, "timeout", 1.0),
        (None, "unreachable", 0.001),
    ]:
        metrics.maker_call(code, no_answer, seconds)
    for count in (0, 10, 3):
        metrics.received(count)
    metrics.sqs_error("ReceiveMessage", "EndpointConnectionError")
    metrics.sqs_error("ReceiveMessage", "EndpointConnectionError")
    metrics.sqs_refused("DeleteMessageBatch", "ReceiptHandleIsInvalid", 2)

    samples = rendered(metrics)
    assert by_label(samples, "widget_consumer_maker_answers_total", "code") == {"201": 2, "200": 1, "500": 1}
    assert by_label(samples, "widget_consumer_maker_unanswered_total", "reason") == {
        "timeout": 1,
        "unreachable": 1,
        "error": 0,
    }
    latency = samples["widget_consumer_maker_request_duration_seconds_count"][()]
    assert latency == 6
    assert samples["widget_consumer_maker_request_duration_seconds_sum"][()] == pytest.approx(1.03)
    buckets = by_label(samples, "widget_consumer_maker_request_duration_seconds_bucket", "le")
    assert (buckets["0.001"], buckets["0.0025"], buckets["0.005"], buckets["1.0"]) == (1, 2, 4, 6)
    assert samples["widget_consumer_receive_batch_size_count"][()] == 3
    assert samples["widget_consumer_receive_batch_size_sum"][()] == 13
    assert by_label(samples, "widget_consumer_receive_batch_size_bucket", "le")["0.0"] == 1
    assert samples["widget_consumer_sqs_errors_total"] == {
        (("error", "EndpointConnectionError"), ("operation", "ReceiveMessage")): 2
    }
    assert samples["widget_consumer_sqs_entries_refused_total"] == {
        (("error", "ReceiptHandleIsInvalid"), ("operation", "DeleteMessageBatch")): 2
    }


def test_counts_and_levels_are_read_at_each_scrape_and_only_then() -> None:
    metrics = ConsumerMetrics()
    reads = []

    def read() -> Snapshot:
        reads.append(1)
        return snapshot(
            outcomes=Counter({"OK": 5 * len(reads), "RETRY": 1}),
            held=3,
            maker_calls_in_flight=2,
            outbox_backlog=7,
            breaker_state="half-open",
            breaker_opened=1,
            breaker_open_seconds=12.5,
            heartbeat_extensions=4,
            rate_limit_waits=9,
            rate_limit_wait_seconds=0.75,
            last_receive=1_800_000_000.5,
        )

    metrics.watch(read)
    assert reads == []
    first = rendered(metrics)
    assert by_label(first, "widget_consumer_outcomes_total", "status") == {
        "OK": 5,
        "REJECTED": 0,
        "FAILED": 0,
        "RETRY": 1,
    }
    assert first["widget_consumer_messages_held"][()] == 3
    assert first["widget_consumer_maker_calls_in_flight"][()] == 2
    assert first["widget_consumer_outbox_backlog"][()] == 7
    assert by_label(first, "widget_consumer_breaker_state", "widget_consumer_breaker_state") == {
        "closed": 0,
        "open": 0,
        "half-open": 1,
    }
    assert first["widget_consumer_breaker_opened_total"][()] == 1
    assert first["widget_consumer_breaker_open_seconds_total"][()] == 12.5
    assert first["widget_consumer_heartbeat_extensions_total"][()] == 4
    assert first["widget_consumer_rate_limit_waits_total"][()] == 9
    assert first["widget_consumer_rate_limit_wait_seconds_total"][()] == 0.75
    assert first["widget_consumer_last_receive_timestamp_seconds"][()] == 1_800_000_000.5
    second = rendered(metrics)
    assert by_label(second, "widget_consumer_outcomes_total", "status")["OK"] == 10
    assert len(reads) == 2


def test_no_last_receive_timestamp_before_the_first_receive() -> None:
    metrics = ConsumerMetrics()
    metrics.watch(snapshot)
    samples = rendered(metrics)
    assert "widget_consumer_last_receive_timestamp_seconds" not in samples
    assert samples["widget_consumer_messages_held"][()] == 0


def test_each_consumer_counts_on_its_own() -> None:
    first, second = ConsumerMetrics(), ConsumerMetrics()
    first.maker_call(201, None, 0.01)
    assert rendered(first)["widget_consumer_maker_answers_total"] == {(("code", "201"),): 1}
    assert "widget_consumer_maker_answers_total" not in rendered(second)


def test_openmetrics_when_asked() -> None:
    metrics = ConsumerMetrics()
    metrics.watch(snapshot)
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    assert "# TYPE widget_consumer_breaker_state stateset" in body.decode()


def test_the_default_observer_takes_every_report_and_keeps_nothing() -> None:
    observer = Observer()
    assert observer.active is False
    observer.maker_call(201, None, 0.01)
    observer.received(3)
    observer.sqs_error("ReceiveMessage", "X")
    observer.sqs_refused("DeleteMessageBatch", "X", 1)
    observer.watch(snapshot)
    assert vars(observer) == {}


def test_sqs_call_errors_are_counted_by_operation(sqs: Any, queues: QueueUrls) -> None:
    metrics = ConsumerMetrics()
    watch_calls(sqs, metrics.sqs_error, metrics.sqs_refused)
    sqs.send_message(QueueUrl=queues.request, MessageBody="x")
    with pytest.raises(ClientError):
        sqs.receive_message(QueueUrl=queues.request + "-gone")
    answer = sqs.delete_message_batch(
        QueueUrl=queues.request, Entries=[{"Id": "0", "ReceiptHandle": "not-a-handle"}]
    )
    assert len(answer["Failed"]) == 1

    unreachable = boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    watch_calls(unreachable, metrics.sqs_error, metrics.sqs_refused)
    with pytest.raises(EndpointConnectionError):
        unreachable.receive_message(QueueUrl=queues.request)

    samples = rendered(metrics)
    errors = {
        (dict(k)["operation"], dict(k)["error"]): v
        for k, v in samples["widget_consumer_sqs_errors_total"].items()
    }
    assert errors.pop(("ReceiveMessage", "EndpointConnectionError")) == 1
    assert list(errors) in (
        [("ReceiveMessage", "AWS.SimpleQueueService.NonExistentQueue")],
        [("ReceiveMessage", "QueueDoesNotExist")],
    )
    refused = samples["widget_consumer_sqs_entries_refused_total"]
    assert [dict(k)["operation"] for k in refused] == ["DeleteMessageBatch"]
    assert list(refused.values()) == [1]


def test_a_consumer_run_is_counted(sqs: Any, queues: QueueUrls, maker_url: str) -> None:
    widget_ids = [str(uuid.uuid1()) for _ in range(6)]
    send_requests(sqs, queues.request, [*widget_ids, str(uuid.uuid4())])  # a version 4 id: the maker's 422
    sqs.send_message(QueueUrl=queues.request, MessageBody="garbage")  # REJECTED without a maker call
    metrics = ConsumerMetrics()
    consumer = Consumer(sqs, queues, Settings(maker_url=maker_url, wait_time=0, workers=2), observer=metrics)
    consumer.start()
    try:
        wait_until(lambda: consumer.counted()[OK] + consumer.counted()[REJECTED] >= 8, 20, consumer.counted)
    finally:
        consumer.stop()
        assert consumer.join(grace=1) == 0
    body = metrics.render(None)[0].decode()
    samples = scrape(body)
    assert by_label(samples, "widget_consumer_outcomes_total", "status") == {
        "OK": 6,
        "REJECTED": 2,
        "FAILED": 0,
        "RETRY": 0,
    }
    assert by_label(samples, "widget_consumer_maker_answers_total", "code") == {"201": 6, "422": 1}
    assert samples["widget_consumer_maker_request_duration_seconds_count"][()] == 7
    assert samples["widget_consumer_receive_batch_size_sum"][()] == 8
    assert samples["widget_consumer_receive_batch_size_count"][()] == consumer.receiver.receives
    assert samples["widget_consumer_last_receive_timestamp_seconds"][()] == pytest.approx(time.time(), abs=5)
    assert samples["widget_consumer_messages_held"][()] == 0
    assert samples["widget_consumer_maker_calls_in_flight"][()] == 0
    assert samples["widget_consumer_outbox_backlog"][()] == 0
    assert "widget_consumer_sqs_errors_total" not in samples
    # No widget or message id becomes a label value.
    assert not any(widget_id in body for widget_id in widget_ids)
