"""The fault proxy: each fault as a real boto3 client sees it, through the proxy to a real local SQS."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.retries.standard import RetryContext, ThrottledRetryableChecker

from devtools.fault_proxy import FAULTS, FaultProxy, check_rates, main, read_message
from devtools.latency_proxy import parse_target
from devtools.stack import local_sqs_kinds, start_fault_proxy, start_sqs
from tests.helpers import wait_until
from widgets.sqs import SQSClient

# The client's read timeout when a test expects a held answer: short, so the test is too.
READ_TIMEOUT = 1


@pytest.fixture(scope="module", params=local_sqs_kinds())
def sqs_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each installed local SQS as a real server on 127.0.0.1, once per module; yield its endpoint."""
    process, endpoint = start_sqs(kind=str(request.param))
    try:
        yield endpoint
    finally:
        process.stop()


def client(endpoint: str, attempts: int = 1, read_timeout: float = 5) -> SQSClient:
    """Return an SQS client on endpoint making at most attempts attempts per call.

    total_max_attempts, not max_attempts: botocore reads the latter as retries after the first
    attempt, so {"max_attempts": 1} makes two attempts and one of them could hide a fault.
    """
    config = Config(
        retries={"mode": "standard", "total_max_attempts": attempts},
        read_timeout=read_timeout,
        connect_timeout=2,
    )
    return boto3.client(
        "sqs",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=config,
    )


def new_queue(sqs_server: str) -> str:
    """Create a queue of its own for one test, directly on the SQS server; return its URL."""
    return client(sqs_server).create_queue(QueueName=f"fault-{uuid.uuid4().hex[:12]}")["QueueUrl"]


def messages_in(sqs_server: str, url: str) -> int:
    """Return how many messages a queue holds, visible or in flight, asked directly of the SQS server.

    In flight too: a long poll whose connection the proxy reset still runs at SQS, and takes
    the next message sent (as Amazon's would) until its visibility timeout.
    """
    attributes = client(sqs_server).get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def outcome(call: Any) -> str:
    """Return what a client call came to: "ok", an error code, or the exception's class name."""
    try:
        call()
        return "ok"
    except ClientError as error:
        return str(error.response["Error"]["Code"])
    except Exception as error:
        return type(error).__name__


@pytest.mark.parametrize(
    ("fault", "seen", "status", "took_effect"),
    [
        ("internal-failure", "InternalFailure", 500, False),
        ("throttle", "RequestThrottled", 400, False),
        ("reset-before", ConnectionClosedError, None, False),
        ("reset-after", ConnectionClosedError, None, True),
        ("hold", ReadTimeoutError, None, True),
    ],
)
def test_each_fault_as_the_client_sees_it(
    sqs_server: str, fault: str, seen: str | type[Exception], status: int | None, took_effect: bool
) -> None:
    """A send faulted fails as Amazon's would, and reached SQS only for reset-after and hold."""
    url = new_queue(sqs_server)
    with FaultProxy(*parse_target(sqs_server), {fault: 1.0}, seed=1, actions=["SendMessage"]) as proxy:
        sqs = client(proxy.endpoint, read_timeout=READ_TIMEOUT)
        started = time.monotonic()
        if isinstance(seen, str):
            with pytest.raises(ClientError) as raised:
                sqs.send_message(QueueUrl=url, MessageBody="faulted")
            assert raised.value.response["Error"]["Code"] == seen
            assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        else:
            with pytest.raises(seen):
                sqs.send_message(QueueUrl=url, MessageBody="faulted")
        if fault == "hold":
            assert time.monotonic() - started >= READ_TIMEOUT
        # Calls the proxy leaves alone go through on the same client, the same connections.
        assert sqs.list_queues()["QueueUrls"]
        calls, faults = proxy.counts()
    assert messages_in(sqs_server, url) == (1 if took_effect else 0)
    assert faults == {("SendMessage", fault): 1}
    assert calls["SendMessage"] == 1
    assert calls["ListQueues"] == 1


def test_a_throttle_is_retried_as_throttling(sqs_server: str) -> None:
    """botocore's own checker calls the answer a throttle, and its standard mode retries it."""
    url = new_queue(sqs_server)
    with FaultProxy(*parse_target(sqs_server), {"throttle": 1.0}) as proxy:
        sqs = client(proxy.endpoint, attempts=3)
        with pytest.raises(ClientError) as raised:
            sqs.send_message(QueueUrl=url, MessageBody="throttled")
        calls, _ = proxy.counts()
    context = RetryContext(
        attempt_number=1,
        operation_model=sqs.meta.service_model.operation_model("SendMessage"),
        parsed_response=raised.value.response,
    )
    assert ThrottledRetryableChecker().is_retryable(context)
    assert calls["SendMessage"] == 3


def test_the_same_seed_faults_the_same_calls(sqs_server: str) -> None:
    """Two proxies with one seed fault the same calls of one sequence; another seed, others."""
    url = new_queue(sqs_server)
    rates = {"internal-failure": 0.2, "throttle": 0.2, "reset-before": 0.2}

    def run(seed: int) -> list[str]:
        """Send 30 messages one after another through a fresh proxy; return each outcome."""
        with FaultProxy(*parse_target(sqs_server), rates, seed=seed) as proxy:
            sqs = client(proxy.endpoint)
            return [outcome(lambda: sqs.send_message(QueueUrl=url, MessageBody="x")) for _ in range(30)]

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    assert {"ok", "InternalFailure", "RequestThrottled", "ConnectionClosedError"} <= set(first)
    # Every call that succeeded, and only those, reached SQS.
    assert messages_in(sqs_server, url) == (first + again + other).count("ok")


def test_faults_between_calls_on_kept_alive_connections(sqs_server: str) -> None:
    """Faulted and passed calls mix on one connection: each passed call gets its own answer."""
    url = new_queue(sqs_server)
    with FaultProxy(*parse_target(sqs_server), {"internal-failure": 0.3, "throttle": 0.3}, seed=3) as proxy:
        sqs = client(proxy.endpoint)
        bodies = [f"body {i}" for i in range(40)]
        results = [outcome(lambda b=b: sqs.send_message(QueueUrl=url, MessageBody=b)) for b in bodies]
        calls, faults = proxy.counts()
    assert calls["SendMessage"] == 40
    assert sum(faults.values()) == 40 - results.count("ok")
    assert faults[("SendMessage", "internal-failure")] == results.count("InternalFailure")
    assert faults[("SendMessage", "throttle")] == results.count("RequestThrottled")
    direct = client(sqs_server)
    received: list[str] = []
    while batch := direct.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get(
        "Messages", []
    ):
        received += [m["Body"] for m in batch]
    assert sorted(received) == sorted(b for b, r in zip(bodies, results, strict=True) if r == "ok")


def test_an_outage_refuses_and_resets_then_ends(sqs_server: str) -> None:
    """In an outage new calls are refused and a call in flight is reset; after it, calls work again."""
    url = new_queue(sqs_server)
    with FaultProxy(*parse_target(sqs_server), {}) as proxy:
        sqs = client(proxy.endpoint, read_timeout=30)
        assert outcome(lambda: sqs.list_queues()) == "ok"
        polled: list[str] = []
        polling = threading.Thread(
            target=lambda: polled.append(
                outcome(lambda: sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20))
            )
        )
        polling.start()
        # The long poll has reached the proxy.
        wait_until(lambda: proxy.counts()[0]["ReceiveMessage"] > 0, 10, "the receive never reached the proxy")
        started = time.monotonic()
        proxy.outage(True)
        polling.join(10)
        assert polled == ["ConnectionClosedError"]
        assert time.monotonic() - started < 5  # reset at once, not at the poll's end
        with pytest.raises(EndpointConnectionError):
            sqs.list_queues()
        proxy.outage(False)
        assert outcome(lambda: sqs.send_message(QueueUrl=url, MessageBody="after")) == "ok"
    assert messages_in(sqs_server, url) == 1


@pytest.mark.timeout(30)
def test_as_a_process_signals_switch_the_outage(sqs_server: str) -> None:
    """As a module it prints its port; SIGUSR1/SIGUSR2 start and end an outage; SIGTERM a summary."""
    process, endpoint = start_fault_proxy(
        sqs_server, ["--seed", "1", "--throttle", "1", "--actions", "ListQueues"]
    )
    try:
        sqs = client(endpoint)
        assert outcome(lambda: sqs.list_queues()) == "RequestThrottled"
        seen = len(process.lines)
        process.signal(signal.SIGUSR1)
        process.wait_for(r"^outage on$", start=seen)
        assert outcome(lambda: sqs.get_queue_url(QueueName="none")) == "EndpointConnectionError"
        process.signal(signal.SIGUSR2)
        process.wait_for(r"^outage off$", start=seen)
        assert outcome(lambda: sqs.create_queue(QueueName="via-fault-process")) == "ok"
    finally:
        code = process.stop(timeout=5)
    assert code == 0, process.output()
    summary = json.loads(process.wait_for(r"^summary (.*)$").group(1))
    assert summary["faults"] == {"ListQueues": {"throttle": 1}}
    assert summary["calls"] == {"CreateQueue": 1, "ListQueues": 1}


def test_rates_are_checked() -> None:
    """Rates are shares of calls: each from 0 to 1, together at most 1, of faults that exist."""
    assert check_rates({"hold": 0.5}) == {fault: (0.5 if fault == "hold" else 0.0) for fault in FAULTS}
    with pytest.raises(ValueError, match=r"add up to 1\.2"):
        check_rates({"hold": 0.6, "throttle": 0.6})
    with pytest.raises(ValueError, match="between 0 and 1"):
        check_rates({"throttle": -0.1})
    with pytest.raises(ValueError, match="unknown faults"):
        check_rates({"slow": 0.1})
    with pytest.raises(SystemExit) as exited:
        main(["--target", "http://127.0.0.1:9324", "--hold", "2"])
    assert exited.value.code == 2


def test_a_chunked_answer_is_read_whole() -> None:
    """An answer in chunks (with a trailer) is read to its end, and its raw bytes kept as sent."""
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )

    async def read() -> Any:
        """Feed the answer and the start of another; read one answer."""
        reader = asyncio.StreamReader()
        reader.feed_data(raw + b"HTTP/1.1 204 No Content\r\n\r\n")
        reader.feed_eof()
        return await read_message(reader, "POST"), await read_message(reader, "POST")

    answer, after = asyncio.run(read())
    assert answer.body == b"hello world"
    assert answer.raw == raw
    assert after.start == "HTTP/1.1 204 No Content"
    assert after.body == b""
