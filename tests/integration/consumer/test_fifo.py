"""The consumer on FIFO queues (moto's mock_aws): each group in order, hand-backs, dead letters, responses."""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

import widget_consumer
import widget_producer
import widgets.producer
from tests.helpers import FIFO_NAMES, ScriptedMaker, always, attributes, depth, take_all, wait_until
from widgets.consumer import Consumer, Settings
from widgets.messages import FAILED, OK, RETRY, Received, new_widget_id
from widgets.sqs import FIFO_REDRIVE_MARGIN, RESPONSE_QUEUE, QueueUrls, ensure_queues

# The maker is told to answer 500 for this id: a request that fails on its own.
DOOMED = "faded000-0000-11e5-8000-000000000bad"


@pytest.fixture
def fifo(sqs: Any, monkeypatch: pytest.MonkeyPatch) -> QueueUrls:
    """The three queues as FIFO queues (checked by their FifoQueue attribute, not their names).

    Each SQS call is made one at a time, as Amazon SQS's are atomic: moto's in-process receive is
    not, and two receives at once (the consumer has five in flight) can split a group between them,
    breaking its order in moto, not in the consumer (seen once in about ten runs on a busy machine).
    """
    one_at_a_time = threading.Lock()
    call = sqs._make_api_call

    def atomic(*args: Any, **kwargs: Any) -> Any:
        with one_at_a_time:
            return call(*args, **kwargs)

    monkeypatch.setattr(sqs, "_make_api_call", atomic)
    urls = ensure_queues(sqs, *FIFO_NAMES, max_receives=2)
    for url in (urls.request, urls.response, urls.dead_letter):
        assert attributes(sqs, url)["FifoQueue"] == "true"
    return urls


def send(sqs: Any, url: str, group: str, widget_ids: list[str]) -> list[str]:
    """Send requests of one group, in order; return their message ids."""
    result = widgets.producer.send_requests(sqs, url, widget_ids, group_id=group)
    assert not result.failed
    return [message_id for message_id, _ in result.sent]


def run_consumer(sqs: Any, urls: QueueUrls, settings: Settings, done: Any, timeout: float = 30) -> Consumer:
    """Run a consumer until done(consumer) is true, then stop it cleanly."""
    consumer = Consumer(sqs, urls, settings)
    consumer.start()
    try:
        wait_until(lambda: done(consumer), timeout, consumer.counted)
    finally:
        consumer.stop()
        assert consumer.join(grace=1) == 0
    return consumer


def drained(sqs: Any, url: str, consumer: Consumer) -> bool:
    """Tell whether the request queue is empty, nothing in flight, and the consumer's writes all done."""
    return depth(sqs, url) == (0, 0) and consumer.outbox.pending() == 0


def made_order(app: Flask) -> list[str]:
    """Return the widget ids the maker made, in the order it made them (its date_created)."""
    store = app.extensions["widget_store"]
    return [w["widget_id"] for w in reversed(store.recent(10_000))]


def responses_by_group(sqs: Any, url: str) -> dict[str, list[dict[str, Any]]]:
    """Drain a FIFO response queue; return each group's responses in order, with their dedup ids."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for message in take_all(sqs, url):
        body = json.loads(message["Body"])
        body["_dedup"] = message["Attributes"]["MessageDeduplicationId"]
        grouped.setdefault(message["Attributes"]["MessageGroupId"], []).append(body)
    return grouped


def fast(url: str, **overrides: Any) -> Settings:
    """Settings with short timings for a test."""
    values: dict[str, Any] = {
        "maker_url": url,
        "wait_time": 0,
        "retry_delay": 1,
        "max_receives": 2,
        "workers": 4,
        "flush_interval": 0.01,
    }
    values.update(overrides)
    return Settings(**values)


def test_each_group_is_made_in_order_and_answered_in_its_group(
    sqs: Any, fifo: QueueUrls, maker_url: str, app: Flask
) -> None:
    sent = {group: [new_widget_id() for _ in range(12)] for group in ("a", "b", "c")}
    message_ids = {group: send(sqs, fifo.request, group, ids) for group, ids in sent.items()}
    # Until every request is answered and deleted (not "36 outcomes": at least once, one may be two).
    run_consumer(sqs, fifo, fast(maker_url), lambda c: drained(sqs, fifo.request, c))
    made = made_order(app)
    for widget_ids in sent.values():
        assert [w for w in made if w in widget_ids] == widget_ids
    responses = responses_by_group(sqs, fifo.response)
    assert sorted(responses) == ["a", "b", "c"]
    for group, found in responses.items():
        assert [r["WidgetId"] for r in found] == sent[group]
        assert [r["_dedup"] for r in found] == [f"response-{m}" for m in message_ids[group]]
    assert take_all(sqs, fifo.request) == []


def test_a_failing_head_holds_only_its_group_and_the_rest_goes_back_in_order(
    sqs: Any, fifo: QueueUrls, maker_url: str, app: Flask
) -> None:
    app.config["FAIL_WIDGET_IDS"] = frozenset({DOOMED})
    behind = [new_widget_id() for _ in range(3)]
    others = [new_widget_id() for _ in range(6)]
    [doomed_id, *_] = send(sqs, fifo.request, "a", [DOOMED, *behind])
    send(sqs, fifo.request, "b", others)
    consumer = run_consumer(sqs, fifo, fast(maker_url), lambda c: c.counts[OK] == 9 and c.counts[FAILED] == 1)
    # The doomed request was retried once (its group's later requests handed back each time,
    # never made before it), then FAILED on its second receive; group b flowed meanwhile.
    assert consumer.counts[RETRY] == 1
    made = made_order(app)
    assert [w for w in made if w in behind] == behind
    assert [w for w in made if w in others] == others
    assert made.index(others[-1]) < made.index(behind[0])
    responses = responses_by_group(sqs, fifo.response)
    assert [(r["WidgetId"], r["Status"]) for r in responses["a"]] == [(DOOMED, FAILED)] + [
        (w, OK) for w in behind
    ]
    # Handed back once with the doomed request's retry: delivered twice, not counted against them.
    assert [r["ReceiveCount"] for r in responses["a"]] == [2, 2, 2, 2]
    [dead] = take_all(sqs, fifo.dead_letter)
    assert json.loads(dead["Body"]) == {"WidgetId": DOOMED}
    assert dead["Attributes"]["MessageGroupId"] == "a"
    assert dead["Attributes"]["MessageDeduplicationId"] == f"dead-letter-{doomed_id}"
    assert take_all(sqs, fifo.request) == []


def test_the_breaker_opening_hands_back_the_rest_of_the_group(
    sqs: Any, fifo: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.status = 503  # the maker is down as a whole: the breaker opens at once
    widget_ids = [new_widget_id() for _ in range(4)]
    send(sqs, fifo.request, "a", widget_ids)
    consumer = Consumer(sqs, fifo, fast(url))
    consumer.start()
    try:
        wait_until(lambda: consumer.counts[RETRY] > 0, 10, consumer.counted)
        # Only the group's first request reached the maker; the others were handed back.
        assert [json.loads(r["body"])["widget_id"] for r in script.requests] == widget_ids[:1]
        script.status = 201
        wait_until(lambda: consumer.counts[OK] >= 4, 20, consumer.counted)
    finally:
        consumer.stop()
        assert consumer.join(grace=1) == 0
    asked = [json.loads(r["body"])["widget_id"] for r in script.requests]
    assert asked == widget_ids[:1] + widget_ids
    assert consumer.counts[FAILED] == 0
    responses = responses_by_group(sqs, fifo.response)
    assert [r["WidgetId"] for r in responses["a"]] == widget_ids


def test_never_two_of_a_group_at_the_maker_at_once(
    sqs: Any, fifo: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.delay = 0.1
    widget_ids = [new_widget_id() for _ in range(5)]
    send(sqs, fifo.request, "a", widget_ids)
    run_consumer(sqs, fifo, fast(url, workers=5), lambda c: c.counts[OK] == 5)
    asked = [json.loads(r["body"])["widget_id"] for r in script.requests]
    assert asked == widget_ids
    starts = [r["at"] for r in script.requests]
    # Each call began after the one before it was answered (each takes the maker 0.1 s).
    assert all(later - earlier >= 0.1 for earlier, later in itertools.pairwise(starts))


def test_the_same_widget_sent_twice_is_one_widget_and_one_response(
    sqs: Any, fifo: QueueUrls, maker_url: str, app: Flask
) -> None:
    widget_id = new_widget_id()
    for _ in range(2):
        result = CliRunner().invoke(
            widget_producer.main,
            ["--sqs-request-queue", FIFO_NAMES[0], "--group-id", "g", "--widget-id", widget_id],
        )
        assert result.exit_code == 0, result.output
    consumer = run_consumer(sqs, fifo, fast(maker_url), lambda c: c.counts[OK] == 1)
    # Stopped: a second request, were there one, would be visible, held or made by now.
    assert depth(sqs, fifo.request) == (0, 0)
    assert consumer.counted()[OK] == 1
    assert app.extensions["widget_store"].count() == 1
    assert [r["WidgetId"] for r in responses_by_group(sqs, fifo.response)["g"]] == [widget_id]


def receive_again(sqs: Any, url: str, times: int) -> Received:
    """Receive a FIFO queue's one message times times, handing it back each time but the last."""
    for attempt in range(times):
        [message] = sqs.receive_message(
            QueueUrl=url, VisibilityTimeout=30, MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount", "MessageGroupId"],
        )["Messages"]  # fmt: skip
        if attempt < times - 1:
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
    return Received.from_sqs(message)


def test_hand_backs_are_not_counted_against_a_fifo_request(
    sqs: Any, fifo: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.status = 500
    send(sqs, fifo.request, "a", [new_widget_id()])
    consumer = Consumer(sqs, fifo, fast(url))
    first = receive_again(sqs, fifo.request, 1)
    assert first.group_id == "a"
    consumer.handler.hand_back(first, "an earlier request of its group goes back to the queue")
    assert consumer.outbox.flush() == 0
    # Its second receive is its first attempt: a failure is retried, not FAILED (max receives 2).
    second = receive_again(sqs, fifo.request, 1)
    assert second.receive_count == 2
    assert consumer.handle(second).status == RETRY
    assert consumer.outbox.flush() == 0
    wait_until(lambda: depth(sqs, fifo.request)[0] == 1, 10, "visible again after the 1 s retry delay")
    third = receive_again(sqs, fifo.request, 1)
    assert consumer.handle(third).status == FAILED


def test_near_the_redrive_limit_a_fifo_request_is_failed_not_sent_afresh(
    sqs: Any, fifo: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.status = 503  # an outage: never counted against the request
    [message_id] = send(sqs, fifo.request, "a", [new_widget_id()])
    consumer = Consumer(sqs, fifo, fast(url))
    limit = consumer.handler.policy.redrive_limit
    assert limit == 2 + FIFO_REDRIVE_MARGIN
    last = receive_again(sqs, fifo.request, limit - 1)
    outcome = consumer.handle(last)
    assert outcome.status == FAILED
    assert "not sent afresh on a FIFO queue" in (outcome.reason or "")
    assert consumer.outbox.flush() == 0
    assert take_all(sqs, fifo.request) == []  # no fresh copy at the end of the group
    [dead] = take_all(sqs, fifo.dead_letter)
    assert dead["Attributes"]["MessageGroupId"] == "a"
    [response] = responses_by_group(sqs, fifo.response)["a"]
    assert response["Status"] == FAILED and response["MessageId"] == message_id


def test_a_standard_request_queue_may_answer_on_a_fifo_response_queue(sqs: Any, maker_url: str) -> None:
    urls = ensure_queues(sqs, "Requests", FIFO_NAMES[1], "DeadLetters", max_receives=2)
    [message_id] = send(sqs, urls.request, "ignored", [new_widget_id()])
    run_consumer(sqs, urls, fast(maker_url), lambda c: c.counts[OK] == 1)
    # Each response is a group of its own: none waits behind another's.
    responses = responses_by_group(sqs, urls.response)
    assert list(responses) == [message_id]


def test_the_consumer_s_dead_letter_queue_follows_the_request_queue(sqs: Any) -> None:
    for name in FIFO_NAMES[:2]:
        sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"})
    args = ["--sqs-request-queue", FIFO_NAMES[0], "--sqs-response-queue", FIFO_NAMES[1], "--no-create-queues"]
    result = CliRunner().invoke(widget_consumer.main, args)
    assert result.exit_code == 1
    assert "queue WidgetRequestDLQ.fifo does not exist" in result.output
    result = CliRunner().invoke(widget_consumer.main, [*args, "--dead-letter-queue", "WidgetRequestDLQ"])
    assert result.exit_code == 2
    assert "--dead-letter-queue WidgetRequestDLQ is a standard queue but" in result.output
    assert "Traceback" not in result.output


def test_fifo_responses_need_a_fifo_response_queue_only_when_named_so(sqs: Any, maker_url: str) -> None:
    urls = ensure_queues(sqs, FIFO_NAMES[0], RESPONSE_QUEUE, FIFO_NAMES[2], max_receives=2)
    send(sqs, urls.request, "a", [new_widget_id() for _ in range(3)])
    run_consumer(sqs, urls, fast(maker_url), lambda c: c.counts[OK] == 3)
    assert len(take_all(sqs, urls.response)) == 3


def test_the_heartbeat_keeps_requests_waiting_in_a_lane_invisible(
    sqs: Any, fifo: QueueUrls, scripted_maker: tuple[ScriptedMaker, str]
) -> None:
    script, url = scripted_maker
    script.delay = 1.5
    send(sqs, fifo.request, "a", [new_widget_id() for _ in range(2)])
    # The second request waits 1.5 s behind the first, longer than the 1 s visibility timeout.
    consumer = Consumer(sqs, fifo, fast(url, visibility_timeout=1, http_timeout=5))
    consumer.start()
    try:
        wait_until(lambda: script.requests)
        assert consumer.dispatcher.lanes() == {"a": 1}
        # Past its 1 s visibility timeout, the one waiting in the lane has stayed hidden.
        always(lambda: depth(sqs, fifo.request)[0] == 0, 1.2, "the request waiting became visible")
        wait_until(lambda: consumer.counts[OK] >= 2, 10, consumer.counted)
    finally:
        consumer.stop()
        consumer.join(grace=1)
    assert len(script.requests) == 2
    assert consumer.heartbeat.extensions >= 2
