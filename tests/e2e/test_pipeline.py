"""End to end: the real scripts as processes, on each local SQS server (fauxqs, moto), with a real maker."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from devtools.latency_proxy import LatencyProxy, parse_target
from devtools.stack import start_sqs
from tests.helpers import ScriptedMaker, Stack, always, wait_until
from widgets.maker.store import WidgetStore
from widgets.messages import new_widget_id
from widgets.producer import send_requests
from widgets.sqs import ensure_queues

pytestmark = pytest.mark.e2e


def test_ok_and_rejected(stack: Stack) -> None:
    stack.consumer()
    ok = stack.produce("--count", "3", "--wait", "--timeout", "20")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("\nOK ") + ok.stdout.startswith("OK ") == 3
    seed = stack.produce("--widget-id=31f37378-54f4-11e5-ad75-3c970e65f731", "--wait", "--timeout", "20")
    assert seed.returncode == 0
    assert "OK 31f37378-54f4-11e5-ad75-3c970e65f731 receive_count=1" in seed.stdout
    bad = stack.produce("--widget-id=this_is_not_a_valid_widget_id", "--wait", "--timeout", "20")
    assert bad.returncode == 1
    assert "REJECTED this_is_not_a_valid_widget_id receive_count=1" in bad.stdout
    assert "1 of 1 requests did not end OK" in bad.stderr


def test_a_maker_outage_opens_the_breaker_and_fails_nothing(stack: Stack) -> None:
    consumer = stack.consumer("--max-receives", "2")
    stack.maker.stop()
    sent = stack.produce("--count", "20")
    widget_ids = {line.split()[1] for line in sent.stdout.splitlines()}
    consumer.wait_for(r"breaker_open: maker unreachable")
    # Longer than --max-receives x --retry-delay: before the breaker, every request FAILED.
    always(lambda: " FAILED " not in consumer.output(), 4)
    stack.restart_maker()
    consumer.wait_for(r"breaker_closed: the maker is back after an outage of \d+\.\ds", timeout=20)
    responses = stack.responses(expected=20, timeout=20)
    assert {r["WidgetId"] for r in responses} == widget_ids
    assert {r["Status"] for r in responses} == {"OK"}
    assert consumer.output().count("breaker_open") == 1
    assert stack.depth(stack.urls.dead_letter) == (0, 0)


def test_failed_goes_to_the_dead_letter_queue(stack: Stack) -> None:
    doomed = "31f37378-54f4-11e5-ad75-3c970e65f731"
    stack.restart_maker("--fail-widget-id", doomed)
    consumer = stack.consumer("--max-receives", "2")
    result = stack.produce(f"--widget-id={doomed}", "--wait", "--timeout", "20")
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "receive_count=2" in result.stdout
    consumer.wait_for("FAILED ")
    # Its response comes first, then its dead-letter copy, then its delete.
    wait_until(lambda: stack.depth(stack.urls.request) == (0, 0), 20)
    assert stack.depth(stack.urls.dead_letter) == (1, 0)


def test_sigterm_finishes_or_hands_back_everything(stack: Stack) -> None:
    urls = stack.urls
    consumer = stack.consumer("--workers", "2")
    sent = stack.produce("--count", "60")
    assert sent.returncode == 0
    consumer.wait_for(r"OK ")
    started = time.monotonic()
    consumer.signal(signal.SIGTERM)
    assert consumer.popen.wait(10) == 0
    assert time.monotonic() - started < 1 + 5  # the HTTP timeout plus a few seconds
    # Nothing is left in flight: each message was answered or handed back at once.
    visible, in_flight = stack.depth(urls.request)
    assert in_flight == 0
    answered = {r["MessageId"] for r in stack.responses(expected=60 - visible)}
    assert visible + len(answered) == 60
    assert "summary OK=" in consumer.output()


def test_second_signal_exits_at_once(stack: Stack, scripted_maker: tuple[ScriptedMaker, str]) -> None:
    script, slow_url = scripted_maker
    script.delay = 30
    consumer = stack.consumer("--http-timeout", "20", "--visibility-timeout", "45", maker_url=slow_url)
    stack.produce()
    wait_until(lambda: len(script.requests) == 1, 20)
    consumer.signal(signal.SIGTERM)
    consumer.wait_for("stopping")
    consumer.signal(signal.SIGTERM)
    assert consumer.popen.wait(5) == 128 + signal.SIGTERM


def test_sigkill_loses_nothing(stack: Stack, scripted_maker: tuple[ScriptedMaker, str]) -> None:
    script, slow_url = scripted_maker
    script.delay = 30
    urls = stack.urls
    doomed = stack.consumer(
        "--http-timeout", "2", "--visibility-timeout", "5", maker_url=slow_url, name="doomed"
    )
    sent = stack.produce("--count", "5")
    widget_ids = {line.split()[1] for line in sent.stdout.splitlines()}
    wait_until(lambda: len(script.requests) == 5, 20)
    doomed.kill()
    assert stack.depth(urls.request) == (0, 5)  # held by the dead consumer
    stack.consumer(name="survivor")
    responses = stack.responses(expected=5, timeout=20)
    wait_until(lambda: stack.depth(urls.request) == (0, 0), 20)  # deleted once their responses went
    assert {r["WidgetId"] for r in responses} == widget_ids
    assert {r["Status"] for r in responses} == {"OK"}
    assert all(r["ReceiveCount"] == 2 for r in responses)


def test_consumer_rides_out_a_local_sqs_restart(stack: Stack) -> None:
    consumer = stack.consumer()
    port = int(stack.endpoint.rsplit(":", 1)[1])
    stack.sqs_process.stop()
    # "no answer" when a long poll was under way as SQS went, "cannot reach" when none was.
    consumer.wait_for("sqs_outage receiving requests: (cannot reach|no answer from) SQS")
    # The outage lasts 2 s: several failed receives, each of which would log were logging per attempt.
    time.sleep(2)
    stack.sqs_process, _ = start_sqs(port, kind=stack.sqs_kind)
    stack.processes.append(stack.sqs_process)
    stack.queues()  # the restarted local SQS starts empty
    sent = stack.produce("--wait", "--timeout", "20")
    assert sent.returncode == 0, sent.stderr
    consumer.wait_for("sqs_recovered receiving requests")
    assert consumer.output().count("sqs_outage receiving") == 1
    assert consumer.running()


def test_producer_to_an_unreachable_endpoint_claims_nothing(stack: Stack) -> None:
    stack.sqs_process.stop()
    result = stack.produce("--count", "5")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "cannot reach SQS at" in result.stderr
    assert "Traceback" not in result.stderr


def test_consumer_warns_at_start_when_the_maker_is_down(stack: Stack) -> None:
    stack.maker.stop()
    consumer = stack.consumer()
    assert "maker_unreachable at" in consumer.output()


FIFO_QUEUES = ("WidgetRequestQueue.fifo", "WidgetResponseQueue.fifo", "WidgetRequestDLQ.fifo")


def drain_fifo_responses(client: Any, url: str) -> list[dict[str, Any]]:
    """Receive and delete every response a FIFO response queue hands out now, noting each one's group."""
    found = []
    while messages := client.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["MessageGroupId"]
    ).get("Messages"):
        for message in messages:
            found.append({**json.loads(message["Body"]), "Group": message["Attributes"]["MessageGroupId"]})
        client.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
    return found


def test_fifo_groups_stay_in_order_through_an_outage_and_a_crash(
    sqs_kind: str, request: pytest.FixtureRequest
) -> None:
    if sqs_kind == "moto":
        pytest.skip(
            "moto's server (5.2.5) breaks FIFO order itself: two receives polling at once split one "
            "group between them, and a dead consumer's messages of a group come back last one first"
        )
    stack: Stack = request.getfixturevalue("stack")
    urls = ensure_queues(stack.client, *FIFO_QUEUES, max_receives=3)
    names = ["--sqs-request-queue", FIFO_QUEUES[0], "--sqs-response-queue", FIFO_QUEUES[1]]
    # The consumers' SQS calls take 20 +/- 5 ms, as across a network: calls in flight at once
    # reach SQS in another order than they were made.
    proxy = LatencyProxy(*parse_target(stack.endpoint), 20, jitter_ms=5, seed=1).start()
    request.addfinalizer(proxy.stop)
    doomed = stack.consumer(*names, name="doomed", endpoint=proxy.endpoint)
    survivor = stack.consumer(*names, name="survivor", endpoint=proxy.endpoint)
    sent: dict[str, list[str]] = {}  # group -> widget ids in the order sent
    message_ids: dict[str, str] = {}  # message id -> widget id
    for group in ("g0", "g1", "g2", "g3", "g4"):
        sent[group] = [new_widget_id() for _ in range(40)]
        result = send_requests(stack.client, urls.request, sent[group], group_id=group)
        assert not result.failed
        message_ids.update(result.sent)
    responses: list[dict[str, Any]] = []

    def collect_until(count: int, timeout: float = 30) -> None:
        def enough() -> bool:
            responses.extend(drain_fifo_responses(stack.client, urls.response))
            return len(responses) >= count

        wait_until(enough, timeout, lambda: f"{len(responses)} responses of {count}")

    collect_until(30)
    assert "OK message_id=" in doomed.output()  # both consumers take part
    doomed.kill()  # holding requests, some of them mid-call
    collect_until(80)  # the survivor goes on, and takes the killed one's groups once they come back
    stack.maker.stop()
    time.sleep(2)  # the maker's outage: its length is the scenario
    stack.restart_maker()
    collect_until(200)
    # Nothing to wait for: a duplicate response, were there one, would come within this second.
    time.sleep(1)
    responses.extend(drain_fifo_responses(stack.client, urls.response))
    # Exactly one terminal outcome per request, in one response: the response a killed consumer
    # sent before it could delete the request is sent again by the other, and SQS drops that as a
    # duplicate (same deduplication id, response-<message id>).
    assert sorted(r["MessageId"] for r in responses) == sorted(message_ids)
    assert {r["Status"] for r in responses} == {"OK"}
    for response in responses:
        assert response["WidgetId"] in sent[response["Group"]]
    # Within each group the widgets were made, and answered, in the order they were sent.
    store = WidgetStore(str(stack.db))
    made = [w["widget_id"] for w in reversed(store.recent(1000))]
    store.close()
    assert len(made) == 200
    for group, widget_ids in sent.items():
        assert [w for w in made if w in widget_ids] == widget_ids, group
        assert [r["WidgetId"] for r in responses if r["Group"] == group] == widget_ids, group
    assert stack.depth(urls.request) == (0, 0)
    assert stack.depth(urls.dead_letter) == (0, 0)
    assert "breaker_open" in survivor.output()  # the outage came while requests were flowing
