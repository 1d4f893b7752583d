"""A guided tour of the pipeline on this machine: `make demo`.

Starts a local SQS, the widget maker and the consumer on free ports with short timings, then
sends requests with the real producer script and shows every outcome: OK, REJECTED, a maker
outage longer than the retry window that the breaker rides out with nothing lost, and a FAILED
request (one the maker refuses with 500 while it makes others) kept in the dead-letter queue.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import boto3

from devtools.stack import (
    PYTHON,
    Process,
    local_sqs_kind,
    local_sqs_version,
    run_script,
    start_consumer,
    start_maker,
    start_sqs,
)
from widgets.sqs import DEAD_LETTER_QUEUE

# Short timings so the tour takes well under a minute; the defaults are for real use.
CONSUMER_ARGS = [
    "--wait-time", "1", "--retry-delay", "1", "--visibility-timeout", "5",
    "--http-timeout", "2", "--max-receives", "3",
]  # fmt: skip
VALID_ID = "31f37378-54f4-11e5-ad75-3c970e65f731"
INVALID_ID = "this_is_not_a_valid_widget_id"
# A valid id the demo's maker is told to refuse with 500 (--fail-widget-id): a request that
# fails on its own while the maker makes others.
DOOMED_ID = "faded000-0000-11e5-8000-000000000bad"
# Longer than --max-receives x --retry-delay (3 s): before the breaker, this outage failed them all.
OUTAGE_SECONDS = 6


def say(text: str) -> None:
    """Print a step of the tour."""
    print(f"\n== {text}", flush=True)


def echo_retries(name: str, line: str) -> None:
    """Show the consumer's breaker, retry and failure lines as they happen; the rest stays quiet."""
    if any(word in line for word in (" RETRY ", " FAILED ", "breaker_")):
        print(f"   [{name}] {line.split(' INFO ', 1)[-1].split(' WARNING ', 1)[-1]}", flush=True)


def produce(endpoint: str, *args: str, outcomes: Counter[str]) -> None:
    """Run the producer with --wait, show its command and output, and count the outcomes."""
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"$ venv/bin/python widget_producer.py {shown}", flush=True)
    result = run_script(
        "widget_producer.py", ["--endpoint-url", endpoint, "--wait", "--timeout", "30", *args]
    )
    for line in result.stdout.splitlines():
        print(f"   {line}")
        status = line.split(" ", 1)[0]
        if status in ("OK", "REJECTED", "FAILED"):
            outcomes[status] += 1
    for line in result.stderr.splitlines():
        print(f"   {line}")


def main() -> int:
    """Run the tour; return 0 when every step showed what it should."""
    try:
        kind = local_sqs_kind()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="widgets-demo-") as tmp:
        processes: list[Process] = []
        try:
            say(f"Starting a local SQS ({kind} {local_sqs_version(kind)}), the widget maker and the consumer")
            sqs, endpoint = start_sqs(kind=kind)
            processes.append(sqs)
            db = Path(tmp) / "widgets.db"
            maker_args = ["--fail-widget-id", DOOMED_ID]
            maker, maker_base = start_maker(db, args=maker_args)
            processes.append(maker)
            maker_port = int(maker_base.rsplit(":", 1)[1])
            consumer = start_consumer(endpoint, f"{maker_base}/add", CONSUMER_ARGS, echo=echo_retries)
            processes.append(consumer)
            print(f"   local SQS {endpoint}, maker {maker_base}, consumer: {' '.join(CONSUMER_ARGS)}")

            say("Three valid requests with new ids, and the seed's own valid id: OK")
            produce(endpoint, "--count", "3", outcomes=outcomes)
            produce(endpoint, f"--widget-id={VALID_ID}", outcomes=outcomes)

            say("The seed's invalid id: the maker answers 422, the request is REJECTED, no retry")
            produce(endpoint, f"--widget-id={INVALID_ID}", outcomes=outcomes)

            say(f"The maker goes down for {OUTAGE_SECONDS}s, longer than 3 receives x 1s retry delay...")
            maker.stop()
            print("$ venv/bin/python widget_producer.py --count 3", flush=True)
            sender = Process(
                "producer",
                [PYTHON, "widget_producer.py", "--endpoint-url", endpoint, "--count", "3", "--wait",
                 "--timeout", "60"],
            )  # fmt: skip
            consumer.wait_for(r"breaker_open", timeout=20)
            print("   ...the breaker holds the requests back in the queue: none is counted as a failure")
            time.sleep(OUTAGE_SECONDS)
            say("...the maker comes back, the breaker closes, and every request is made")
            maker, _ = start_maker(db, port=maker_port, args=maker_args)
            processes.append(maker)
            sender.popen.wait(60)
            for line in sender.lines:
                print(f"   {line}")
                status = line.split(" ", 1)[0]
                if status in ("OK", "REJECTED", "FAILED"):
                    outcomes[status] += 1

            say("A request the maker refuses with 500 while it makes others: FAILED after 3 receives")
            produce(endpoint, f"--widget-id={DOOMED_ID}", outcomes=outcomes)

            say("The FAILED request is kept in the dead-letter queue")
            client = boto3.client(
                "sqs", endpoint_url=endpoint, region_name="us-east-1",
                aws_access_key_id="local", aws_secret_access_key="local",
            )  # fmt: skip
            dlq = client.get_queue_url(QueueName=DEAD_LETTER_QUEUE)["QueueUrl"]
            kept = client.receive_message(
                QueueUrl=dlq, MaxNumberOfMessages=10, MessageAttributeNames=["All"], VisibilityTimeout=0
            ).get("Messages", [])
            for message in kept:
                reason = message["MessageAttributes"]["FailureReason"]["StringValue"]
                print(f"   {message['Body']}  FailureReason={reason!r}")
        finally:
            for process in reversed(processes):
                process.stop()

    say("Summary")
    for status in ("OK", "REJECTED", "FAILED"):
        print(f"   {status:<9}{outcomes[status]}")
    print(f"   dead-letter queue: {len(kept)} message(s); took {time.monotonic() - started:.0f}s")
    expected = Counter({"OK": 7, "REJECTED": 1, "FAILED": 1})
    if outcomes != expected or len(kept) != 1:
        print(f"   expected {dict(expected)} and 1 dead letter: something is wrong", file=sys.stderr)
        return 1
    print("   every request ended as it should. Next: make run, or see README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
