"""The outbox on moto's in-process SQS: no call waits on another, FIFO responses in order, backpressure."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from tests.helpers import (
    FakeClock,
    all_bodies,
    always,
    depth,
    receive_one,
    received,
    take_all,
    wait_until,
)
from widgets.consumer import outbox as outbox_module
from widgets.consumer.breaker import Breaker
from widgets.consumer.dispatcher import Dispatcher
from widgets.consumer.heartbeat import Heartbeat
from widgets.consumer.outbox import MAX_UNSETTLED, MAX_UNSETTLED_AGE, Outbox
from widgets.consumer.receiver import FAILING_FOR, Receiver
from widgets.messages import Received
from widgets.sqs import MAX_OUTAGE_BACKOFF, OutageLog, QueueUrls, create_queue


class SlowSQS:
    """An SQS client whose batch calls take 20 +/- 5 ms, as across a network; calls can be made to hang."""

    def __init__(self, sqs: Any, seed: int = 1) -> None:
        """Wrap sqs; the delays are drawn from a seeded generator."""
        self.sqs = sqs
        self.meta = sqs.meta
        self.to_hang: dict[str, int] = {}  # operation -> how many of its next calls hang
        self.hanging = 0  # calls hanging now
        self.released = threading.Event()  # set: hanging calls end with a read timeout
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        """Return the client's method, slowed down if it is a batch call."""
        call = getattr(self.sqs, name)
        if not name.endswith("_batch"):
            return call

        def slow(**kwargs: Any) -> Any:
            with self._lock:
                delay = self._random.uniform(0.015, 0.025)
                hang = self.to_hang.get(name, 0) > 0
                if hang:
                    self.to_hang[name] -= 1
                    self.hanging += 1
            time.sleep(delay)
            if hang:
                # A call whose answer never comes: it ends with the client's read timeout.
                self.released.wait(10)
                raise ReadTimeoutError(endpoint_url="http://sqs")
            return call(**kwargs)

        return slow


@pytest.fixture
def fifo_responses(sqs: Any, queues: QueueUrls) -> QueueUrls:
    """The standard request queue, with a FIFO response queue."""
    return replace(queues, response=create_queue(sqs, "WidgetResponseQueue.fifo"))


def in_groups(messages: list[Received], groups: int) -> list[Received]:
    """Give the messages group ids in turn, as a FIFO queue's messages carry them."""
    return [replace(m, group_id=f"group-{i % groups}") for i, m in enumerate(messages)]


def test_a_groups_responses_arrive_in_order_on_a_client_of_20_ms_a_call(
    sqs: Any, fifo_responses: QueueUrls
) -> None:
    slow = SlowSQS(sqs)
    messages = in_groups(received(sqs, fifo_responses.request, 60), groups=3)
    outbox = Outbox(slow, fifo_responses, flush_interval=0.002)
    outbox.start()
    for number, message in enumerate(messages):
        outbox.respond_and_delete(message, json.dumps({"Number": number}))
    wait_until(lambda: outbox.pending() == 0, timeout=20)
    outbox.close(1)
    by_group: dict[str, list[int]] = {}
    for response in take_all(sqs, fifo_responses.response):
        group = response["Attributes"]["MessageGroupId"]
        by_group.setdefault(group, []).append(json.loads(response["Body"])["Number"])
    assert by_group == {f"group-{g}": list(range(g, 60, 3)) for g in range(3)}
    assert depth(sqs, fifo_responses.request) == (0, 0)


def test_a_failed_fifo_response_is_retried_before_the_rest_of_its_group(
    sqs: Any, fifo_responses: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = in_groups(received(sqs, fifo_responses.request, 4), groups=1)
    outbox = Outbox(sqs, fifo_responses, flush_interval=0)
    real_send = sqs.send_message_batch
    refused = []

    def refuse_the_first_once(**kwargs: Any) -> Any:
        if not refused:
            refused.append(kwargs["Entries"][0]["MessageBody"])
            return {
                "Failed": [{"Id": kwargs["Entries"][0]["Id"], "SenderFault": False, "Code": "InternalError"}]
            }
        return real_send(**kwargs)

    monkeypatch.setattr(sqs, "send_message_batch", refuse_the_first_once)
    for number, message in enumerate(messages):
        outbox.respond_and_delete(message, json.dumps({"Number": number}))
    outbox.flush()
    assert outbox.flush() == 0
    assert refused == ['{"Number": 0}']
    assert [json.loads(r["Body"])["Number"] for r in take_all(sqs, fifo_responses.response)] == [0, 1, 2, 3]


def test_a_hung_call_holds_back_only_its_own_writes(sqs: Any, queues: QueueUrls) -> None:
    slow = SlowSQS(sqs)
    slow.to_hang["send_message_batch"] = 1
    messages = received(sqs, queues.request, 21)
    outbox = Outbox(slow, queues, flush_interval=0.01)
    outbox.start()
    try:
        for message in messages[:10]:
            outbox.respond_and_delete(message, "{}")  # a full batch: its call hangs
        wait_until(lambda: slow.hanging == 1)
        extended = threading.Event()
        outbox.change_visibility(messages[20], 60, done=lambda called_at: extended.set())
        for message in messages[10:20]:
            outbox.respond_and_delete(message, "{}")
        # The second batch is answered and deleted, and the extension made, while the first
        # call still waits for its answer.
        wait_until(lambda: outbox.pending() == 10 and extended.is_set(), timeout=5)
        assert depth(sqs, queues.request) == (0, 11)
        slow.released.set()  # the hung call times out; its writes are made again
        wait_until(lambda: outbox.pending() == 0, timeout=5)
        assert depth(sqs, queues.request) == (0, 1)
    finally:
        slow.released.set()
        outbox.close(1)


def test_the_heartbeats_extensions_never_wait_behind_stalled_responses(sqs: Any, queues: QueueUrls) -> None:
    slow = SlowSQS(sqs)
    slow.to_hang["send_message_batch"] = 1_000
    messages = received(sqs, queues.request, 101)
    outbox = Outbox(slow, queues, flush_interval=0.01)
    outbox.start()
    try:
        for message in messages[:100]:
            outbox.respond_and_delete(message, "{}")  # ten full batches: every response call hangs
        wait_until(lambda: slow.hanging == outbox_module.CALLS_IN_FLIGHT)
        extended = threading.Event()
        outbox.change_visibility(messages[100], 60, done=lambda called_at: extended.set())
        wait_until(extended.is_set, timeout=2)
    finally:
        slow.released.set()
        outbox.close(0.1)


def test_settling_behind_by_count_or_by_age(
    sqs: Any, queues: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    outbox = Outbox(sqs, queues, flush_interval=0, clock=clock)
    [message] = received(sqs, queues.request, 1)
    outbox.change_visibility(message, 30)
    assert not outbox.behind()
    clock.now += MAX_UNSETTLED_AGE + 0.1
    assert outbox.oldest() == pytest.approx(MAX_UNSETTLED_AGE + 0.1)
    assert outbox.behind()
    assert outbox.flush() == 0
    assert not outbox.behind()
    monkeypatch.setattr(outbox_module, "MAX_UNSETTLED", 4)
    messages = received(sqs, queues.request, 5)
    for message in messages:
        outbox.change_visibility(message, 30)
    assert outbox.pending() == 5
    assert outbox.behind()
    outbox.change_visibility(messages[0], 30)
    outbox.change_visibility(messages[1], 30)
    outbox.flush()
    for message in messages[:3]:
        outbox.change_visibility(message, 30)
    assert outbox.pending() == 3
    assert outbox.behind()  # until caught up to half the bound
    outbox.flush()
    outbox.change_visibility(messages[0], 30)
    outbox.change_visibility(messages[1], 30)
    assert not outbox.behind()
    assert MAX_UNSETTLED >= 10 * 40  # over ten times what settling holds in normal work (module docstring)


def test_a_writes_done_waits_for_its_whole_chain(
    sqs: Any, queues: QueueUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    [message] = received(sqs, queues.request, 1)
    outbox = Outbox(sqs, queues, flush_interval=0)
    settled: list[float | None] = []
    outbox.respond_and_delete(message, "{}", done=settled.append)
    real_delete = sqs.delete_message_batch
    monkeypatch.setattr(
        sqs,
        "delete_message_batch",
        lambda **kwargs: (_ for _ in ()).throw(ReadTimeoutError(endpoint_url="x")),
    )
    assert outbox.flush() == 1
    assert settled == []  # the response went, the delete did not
    monkeypatch.setattr(sqs, "delete_message_batch", real_delete)
    assert outbox.flush() == 0
    assert len(settled) == 1 and settled[0] is not None


def test_one_failed_call_is_retried_at_once_and_an_outage_logged_once(
    sqs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    outage = OutageLog(sqs, "receiving requests", random.Random(1), clock=clock)
    error = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert outage.failed(error) == 0.0  # a reset or a throttle: tried again at once
    assert outage.failed(error) > 0  # two in a row: a back-off, but no outage yet (no log)
    outage.recovered()
    assert caplog.records == []
    pauses = []
    for _ in range(8):
        pauses.append(outage.failed(error))
        clock.now += 0.25
    assert pauses[0] == 0.0 and all(0 <= p <= MAX_OUTAGE_BACKOFF for p in pauses)
    assert max(pauses[4:]) > 0.5  # backs off, with jitter
    assert outage.error == "cannot reach SQS at https://sqs.us-east-1.amazonaws.com"
    outage.recovered()
    # Logged once the calls had failed for a second, and once when one worked again.
    assert [r.getMessage().split(" ")[0] for r in caplog.records] == ["sqs_outage", "sqs_recovered"]


def test_the_age_bound_allows_for_the_write_timeout(sqs: Any, queues: QueueUrls) -> None:
    clock = FakeClock()
    outbox = Outbox(sqs, queues, flush_interval=0, clock=clock, write_timeout=5)
    [message] = received(sqs, queues.request, 1)
    outbox.change_visibility(message, 30)
    clock.now += 19  # a hung write or two (5 s each) and their retries: not yet behind
    assert not outbox.behind()
    clock.now += 1.1  # four write timeouts
    assert outbox.behind()


def a_receiver(sqs: Any, url: str, behind: Callable[[], bool] = lambda: False) -> Receiver:
    """A receiver of one message at a time from url, not started, with a dispatcher and breaker of its own."""
    stopping = threading.Event()
    return Receiver(
        sqs=sqs,
        url=url,
        dispatcher=Dispatcher(
            workers=1, lookahead=1, handle=lambda m: True, release=print, stopping=stopping
        ),
        breaker=Breaker(),
        probe=lambda: True,
        heartbeat=Heartbeat(extend=lambda m, s, done: None, visibility_timeout=5),
        batch_size=1,
        wait_time=0,
        visibility_timeout=5,
        stopping=stopping,
        behind=behind,
    )


def test_receives_count_as_failing_after_half_a_second_and_say_when_settling_holds_them_back(
    sqs: Any, queues: QueueUrls
) -> None:
    behind = [False]
    receiver = a_receiver(sqs, queues.request, behind=lambda: behind[0])
    error = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    receiver._outage.failed(error)
    receiver._outage.failed(error)
    assert receiver.failing() is None  # not for half a second yet: two throttles in a row are no outage
    receiver._outage.since = time.monotonic() - FAILING_FOR
    assert receiver.failing() == "cannot reach SQS at https://sqs.us-east-1.amazonaws.com"
    assert not receiver.held_back()
    behind[0] = True
    assert receiver._held_back()
    assert receiver.held_back()  # /healthz then judges by the writes (test_health.py)


def test_a_fifo_receive_whose_answer_was_lost_is_made_again_with_its_attempt_id(
    sqs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = create_queue(sqs, "Orders.fifo")
    receiver = a_receiver(sqs, url)
    attempts: list[str] = []
    real_receive = sqs.receive_message
    failures = [
        ConnectionClosedError(endpoint_url="x"),
        ClientError({"Error": {"Code": "Throttling"}}, "Receive"),
    ]

    def receive(**kwargs: Any) -> Any:
        attempts.append(kwargs["ReceiveRequestAttemptId"])
        if failures:
            raise failures.pop(0)
        return real_receive(**kwargs)

    monkeypatch.setattr(sqs, "receive_message", receive)
    for _ in range(3):
        with contextlib.suppress(ConnectionClosedError, ClientError):
            receiver.receive(1)
    receiver.receive(1)
    # Lost answer: the same id again; refused (a throttle): a new one; answered: a new one next time.
    assert attempts[0] == attempts[1] != attempts[2] != attempts[3]


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


def batch_calls(sqs: Any, clock: Callable[[], float] = time.monotonic) -> list[tuple[str, int, float]]:
    """Record each batch write the client makes: (operation, entries, when by clock)."""
    calls: list[tuple[str, int, float]] = []

    def record(params: dict[str, Any], model: Any, **kwargs: Any) -> None:
        if model.name.endswith("Batch"):
            calls.append((model.name, len(params["Entries"]), clock()))

    sqs.meta.events.register("provide-client-params.sqs", record)
    return calls


def test_a_flush_for_a_full_batch_leaves_the_rest_until_its_interval(sqs: Any, queues: QueueUrls) -> None:
    clock = FakeClock()  # the outbox's time: it moves only when the test says
    outbox = Outbox(sqs, queues, flush_interval=0.5, clock=clock)
    for message in received(sqs, queues.request, 13):
        outbox.respond_and_delete(message, "{}")
    calls = batch_calls(sqs)
    outbox.start()
    try:
        wait_until(lambda: len(calls) >= 2)  # the full batch at once: its time has not moved
        # The rest waits for its interval (however long the test waits on the wall clock).
        always(lambda: len(calls) == 2, 0.3, "the part-filled batch went before its interval")
        clock.now += 0.5
        wait_until(lambda: outbox.pending() == 0)
    finally:
        outbox.close(1)
    assert [(name, size) for name, size, _ in calls] == [
        ("SendMessageBatch", 10),
        ("DeleteMessageBatch", 10),
        ("SendMessageBatch", 3),
        ("DeleteMessageBatch", 3),
    ]
    assert depth(sqs, queues.request) == (0, 0)


def test_full_batches_do_not_hold_back_a_part_filled_one(sqs: Any, queues: QueueUrls) -> None:
    messages = received(sqs, queues.request, 13)
    clock = FakeClock()
    outbox = Outbox(sqs, queues, flush_interval=0.3, clock=clock)
    calls = batch_calls(sqs, clock)
    outbox.start()
    try:
        for message in messages[10:]:
            outbox.change_visibility(message, 0)  # three hand-backs, never a full batch
        # Full batches of responses, steadily, for 1.5 s of the outbox's time: a batch every
        # 0.05 s, each taken before the next comes (so the outbox looked at every moment).
        for sent in range(1, 31):
            clock.now = sent * 0.05
            for message in messages[:10]:
                outbox.respond_and_delete(message, "{}")
            wait_until(lambda: sum(name == "SendMessageBatch" for name, _, _ in calls) >= sent)  # noqa: B023
    finally:
        outbox.close(2)
    [changed_at] = [at for name, _, at in calls if name == "ChangeMessageVisibilityBatch"]
    # Due at 0.3 and taken then (its call's thread may record it a batch or two later), not after
    # the stream.
    assert 0.3 <= changed_at < 1.0
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
