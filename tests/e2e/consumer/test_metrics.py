"""End to end: a consumer process's /metrics and /healthz, on each local SQS server, with a real maker."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
import requests

from devtools.stack import Process, start_sqs
from tests.helpers import Samples, Stack, by_label, scrape, wait_until

pytestmark = pytest.mark.e2e

DOOMED = "31f37378-54f4-11e5-ad75-3c970e65f731"
STATUSES = ("OK", "REJECTED", "FAILED")


def endpoint_of(consumer: Process) -> str:
    """Return the base URL of a consumer's metrics and health, from its log."""
    return consumer.wait_for(r"metrics at (\S+)/metrics, health at").group(1)


def metrics(base: str) -> Samples:
    """Scrape a consumer's metrics."""
    answer = requests.get(f"{base}/metrics", timeout=5)
    assert answer.status_code == 200
    return scrape(answer.text)


def health(base: str) -> tuple[int, dict[str, Any]]:
    """Ask a consumer's /healthz; return the status and the JSON body."""
    answer = requests.get(f"{base}/healthz", timeout=5)
    return answer.status_code, answer.json()


def test_metrics_count_the_outcomes_on_the_response_queue(stack: Stack) -> None:
    stack.restart_maker("--fail-widget-id", DOOMED)
    consumer = stack.consumer("--max-receives", "2", "--metrics-port", "0")
    base = endpoint_of(consumer)
    assert health(base)[0] == 200
    # Sent from a thread while the loop below scrapes: sent first, the requests could all be
    # answered before its first scrape on a busy machine, and nothing would be seen during the run.
    sends = (["--count", "20"], ["--widget-id=this_is_not_a_valid_widget_id"], [f"--widget-id={DOOMED}"])
    exit_codes: list[int] = []
    producer = threading.Thread(target=lambda: exit_codes.extend(stack.produce(*a).returncode for a in sends))
    producer.start()

    # During the run: counters only grow, and count at least every response already sent.
    responses: list[dict[str, Any]] = []
    last: dict[str, float] = {}
    scrapes = 0

    def scraped_all() -> bool:
        nonlocal last, scrapes
        responses.extend(stack.responses())
        outcomes = by_label(metrics(base), "widget_consumer_outcomes_total", "status")
        answered = Counter(r["Status"] for r in responses)
        assert all(outcomes[status] >= answered[status] for status in STATUSES), (outcomes, answered)
        assert all(outcomes[status] >= last.get(status, 0) for status in outcomes)
        last, scrapes = outcomes, scrapes + 1
        # Every request answered (at least once: a request delivered twice is answered twice).
        return len({r["MessageId"] for r in responses}) >= 22

    try:
        wait_until(scraped_all, 30, lambda: f"{len(responses)} responses", pause=0.1)
    finally:
        producer.join(60)
    assert exit_codes == [0, 0, 0]
    assert scrapes > 1
    # Nothing left in the queue nor in flight: every response there will be has been sent.
    wait_until(lambda: stack.depth(stack.urls.request) == (0, 0), 20)
    responses.extend(stack.responses())

    # After it: the counters are the responses, exactly, repeats included.
    samples = metrics(base)
    last_answer = {r["MessageId"]: r for r in sorted(responses, key=lambda r: r["ReceiveCount"])}
    assert Counter(r["Status"] for r in last_answer.values()) == {"OK": 20, "REJECTED": 1, "FAILED": 1}
    answered = Counter(r["Status"] for r in responses)
    outcomes = by_label(samples, "widget_consumer_outcomes_total", "status")
    assert {status: outcomes[status] for status in STATUSES} == answered
    assert stack.depth(stack.urls.dead_letter) == (outcomes["FAILED"], 0)
    answers = by_label(samples, "widget_consumer_maker_answers_total", "code")
    # Each widget made once (201); a request delivered again finds its widget made (200); the doomed
    # one's 500s are a RETRY (its first receive of two) and its FAILED.
    repeats = answered["OK"] - 20
    assert answers == {
        "201": 20,
        "422": answered["REJECTED"],
        "500": outcomes["RETRY"] + outcomes["FAILED"],
    } | ({"200": repeats} if repeats else {})
    assert outcomes["RETRY"] >= 1
    assert samples["widget_consumer_maker_request_duration_seconds_count"][()] == sum(answers.values())
    # Every delivery: each request's highest receive count (its RETRYs and repeats included).
    deliveries = sum(r["ReceiveCount"] for r in last_answer.values())
    assert samples["widget_consumer_receive_batch_size_sum"][()] == deliveries
    assert samples["widget_consumer_messages_held"][()] == 0
    assert samples["widget_consumer_breaker_opened_total"][()] == 0
    assert samples["process_cpu_seconds_total"][()] > 0
    assert DOOMED not in requests.get(f"{base}/metrics", timeout=5).text
    assert health(base)[0] == 200


def test_healthz_is_503_while_sqs_is_away_and_200_when_it_is_back(stack: Stack) -> None:
    consumer = stack.consumer("--metrics-port", "0")
    base = endpoint_of(consumer)
    status, body = health(base)
    assert (status, body["status"], body["breaker"]) == (200, "ok", "closed")
    port = int(stack.endpoint.rsplit(":", 1)[1])
    stack.sqs_process.stop()
    wait_until(lambda: health(base)[0] == 503, timeout=10)
    # The long polls under way lose their connection ("no answer"), the next calls find none.
    reason = f"receives fail: cannot reach SQS at {stack.endpoint}"
    wait_until(lambda: health(base)[1]["reason"].startswith(reason), timeout=10)
    status, body = health(base)
    assert body["status"] == "unhealthy"
    errors = metrics(base)["widget_consumer_sqs_errors_total"]
    assert errors[(("error", "EndpointConnectionError"), ("operation", "ReceiveMessage"))] >= 1

    stack.sqs_process, _ = start_sqs(port, kind=stack.sqs_kind)
    stack.processes.append(stack.sqs_process)
    stack.queues()  # the restarted local SQS starts empty
    wait_until(lambda: health(base)[0] == 200, timeout=20)
    assert health(base)[1]["status"] == "ok"
    assert stack.produce("--wait", "--timeout", "20").returncode == 0
    assert consumer.running()
