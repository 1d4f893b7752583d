"""A guided tour of the pipeline on this machine: `make demo`.

Starts a local SQS, the widget maker and the consumer on free ports with short timings, then
sends requests with the real producer script and shows every outcome: OK, REJECTED, a maker
outage longer than the retry window that the breaker rides out with nothing lost, a FAILED
request (one the maker refuses with 500 while it makes others) kept in the dead-letter queue,
FIFO queues: two customers' requests, each customer's made in the order sent, through an outage;
and sqs-relay, the same consumer for any queue and any HTTP service, forwarding JSON and plain-text
messages from a queue named Orders to a small receiver that checks each call's signature.
"""

from __future__ import annotations

import base64
import json
import secrets
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from devtools.stack import (
    PYTHON,
    Process,
    chosen_sqs_kind,
    local_sqs_version,
    run_script,
    start_consumer,
    start_maker,
    start_sqs,
)
from widgets.sqs import DEAD_LETTER_QUEUE, SQSClient

if TYPE_CHECKING:
    from mypy_boto3_sqs.type_defs import MessageAttributeValueTypeDef

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
# The FIFO part: its queues, two customers (message groups) and how many requests each sends.
FIFO_QUEUES = [
    "--sqs-request-queue",
    "WidgetRequestQueue.fifo",
    "--sqs-response-queue",
    "WidgetResponseQueue.fifo",
]
FIFO_GROUPS = ("customer-1", "customer-2")
FIFO_COUNT = 4
FIFO_OUTAGE_SECONDS = 2
# The relay part: a queue of another name, its outcome reports, and what goes through it (the
# third document is one the receiver refuses with 422: --reject-field reject).
RELAY_QUEUE = "Orders"
RELAY_OUTCOMES = "OrderOutcomes"
RELAY_ARGS = ["--queue", RELAY_QUEUE, "--response-queue", RELAY_OUTCOMES, "--wait-time", "1"]
# Each body with its ContentType attribute (None: the relay's --content-type, application/json).
RELAY_MESSAGES = [
    ('{"order": 1, "item": "widget", "note": "Grüße"}', None),
    ('{"order": 2, "item": "gadget", "quantity": 3}', None),
    ('{"order": 3, "item": "gizmo", "reject": true}', None),
    ("Order 4: please call before delivery.", "text/plain; charset=utf-8"),
]


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


def read_responses(
    client: SQSClient, expected: int, timeout: float = 30, queue: str = "WidgetResponseQueue.fifo"
) -> list[dict[str, Any]]:
    """Read and delete responses from a response queue (the FIFO one) until expected came (or timeout)."""
    url = client.get_queue_url(QueueName=queue)["QueueUrl"]
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(found) < expected and time.monotonic() < deadline:
        answer = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in answer.get("Messages", []):
            found.append(json.loads(message["Body"]))
            client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return found


def send_fifo(endpoint: str) -> dict[str, list[str]]:
    """Send each customer's requests to the FIFO request queue as one group; return the ids sent, in order."""
    sent: dict[str, list[str]] = {}
    for group in FIFO_GROUPS:
        args = [*FIFO_QUEUES[:2], "--group-id", group, "--count", str(FIFO_COUNT)]
        print(f"$ venv/bin/python widget_producer.py {' '.join(args)}", flush=True)
        result = run_script("widget_producer.py", ["--endpoint-url", endpoint, *args])
        sent[group] = [line.split()[1] for line in result.stdout.splitlines() if len(line.split()) == 2]
    return sent


def show_fifo_order(client: SQSClient, sent: dict[str, list[str]]) -> bool:
    """Print each customer's widgets in the order the maker made them; return whether it is the order sent."""
    responses = read_responses(client, sum(len(ids) for ids in sent.values()))
    # The widget in each OK response carries the maker's date_created, to the microsecond.
    made = {r["WidgetId"]: r["Widget"]["date_created"] for r in responses if r.get("Status") == "OK"}
    in_order = True
    for group, widget_ids in sent.items():
        order = sorted(widget_ids, key=lambda w: made.get(w, "~"))
        print(f"   {group}, in the order the maker made them (date_created):")
        for widget_id in order:
            when = made.get(widget_id, "never made")
            print(f"      {when:<32}  {widget_id}  (sent {widget_ids.index(widget_id) + 1}.)")
        ordered = order == widget_ids and len(widget_ids) == FIFO_COUNT and all(w in made for w in widget_ids)
        print(f"      {'made in the order they were sent' if ordered else 'NOT made in the order sent'}")
        in_order = in_order and ordered
    return in_order


def echo_receiver(name: str, line: str) -> None:
    """Show everything the webhook receiver prints: each call it got, its headers and its answer."""
    print(f"   [{name}] {line}", flush=True)


def demo_secret() -> str:
    """Return a new Standard Webhooks secret: whsec_ and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def send_to_relay(client: SQSClient) -> dict[str, str]:
    """Send RELAY_MESSAGES to the relay's queue, each with a Tenant attribute and a traceparent;
    return each body by the message id it was sent with."""
    url = client.get_queue_url(QueueName=RELAY_QUEUE)["QueueUrl"]
    sent = {}
    for body, content_type in RELAY_MESSAGES:
        attributes: dict[str, MessageAttributeValueTypeDef] = {
            "Tenant": {"DataType": "String", "StringValue": "acme"},
            # W3C Trace Context: a new trace id and parent span id, sampled
            "traceparent": {
                "DataType": "String",
                "StringValue": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
            },
        }
        if content_type is not None:
            attributes["ContentType"] = {"DataType": "String", "StringValue": content_type}
        answer = client.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)
        sent[answer["MessageId"]] = body
        print(f"   sent {body!r}")
    return sent


def show_relay_reports(client: SQSClient, receiver: Process, sent: dict[str, str]) -> Counter[str]:
    """Print the outcome report of each message sent to the relay, once the receiver showed every
    call; return the outcomes counted."""
    reports = read_responses(client, len(sent), queue=RELAY_OUTCOMES)
    deadline = time.monotonic() + 10
    while sum(line.strip().startswith("-> ") for line in receiver.lines) < len(sent):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    say(f"The outcome reports on {RELAY_OUTCOMES} (--response-queue), one per message")
    outcomes: Counter[str] = Counter()
    order = list(sent)
    for report in sorted(
        reports, key=lambda r: order.index(r["MessageId"]) if r["MessageId"] in sent else 99
    ):
        outcomes[report["Status"]] += 1
        body = sent.get(report["MessageId"], "?")
        print(f"   {report['Status']:<9}{body!r:<52}-> {report.get('StatusCode')} {report.get('Body', '')}")
    return outcomes


def relay_part(endpoint: str, client: SQSClient, processes: list[Process]) -> tuple[Counter[str], int]:
    """Start the webhook receiver and sqs-relay (added to processes), relay RELAY_MESSAGES and show
    what the receiver got and the outcome reports; return the outcomes and how many calls verified."""
    say(f"sqs-relay: any queue to any HTTP service; here {RELAY_QUEUE} to a receiver that checks signatures")
    secret_env = {"WEBHOOK_SECRET": demo_secret()}  # both sides know it; never on a command line
    print("$ export WEBHOOK_SECRET=whsec_...  # a new one: whsec_ and 32 random bytes in base64")
    receiver_args = ["--port", "0", "--reject-field", "reject"]
    print(f"$ venv/bin/python -m devtools.webhook_receiver {' '.join(receiver_args)}", flush=True)
    receiver = Process(
        "receiver",
        [PYTHON, "-m", "devtools.webhook_receiver", *receiver_args],
        env=secret_env,
        echo=echo_receiver,
    )
    processes.append(receiver)
    receiver_url = receiver.wait_for(r"listening on (http://127\.0\.0\.1:\d+)").group(1)
    relay_args = [*RELAY_ARGS, "--target-url", f"{receiver_url}/orders"]
    print(f"$ venv/bin/sqs-relay {' '.join(relay_args)}", flush=True)
    relay = Process(
        "relay",
        [PYTHON, "sqs_relay.py", "--endpoint-url", endpoint, *relay_args],
        env=secret_env,
        echo=echo_retries,
    )
    processes.append(relay)
    relay.wait_for(r"consuming ")
    print('   three JSON documents (the third has "reject": true) and a plain-text one, each with a Tenant')
    print("   attribute and a traceparent, which the receiver gets as headers:")
    outcomes = show_relay_reports(client, receiver, send_to_relay(client))
    return outcomes, sum("signature verified" in line for line in receiver.lines)


def main() -> int:
    """Run the tour; return 0 when every step showed what it should."""
    kind = chosen_sqs_kind()
    if kind is None:
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

            say("FIFO queues: two customers, each one's widgets made in the order sent, through an outage")
            fifo_consumer = start_consumer(
                endpoint, f"{maker_base}/add", [*CONSUMER_ARGS, *FIFO_QUEUES], echo=echo_retries, name="fifo"
            )
            processes.append(fifo_consumer)
            print(f"   a second consumer on the FIFO queues: {' '.join(FIFO_QUEUES)}")
            maker.stop()
            sent = send_fifo(endpoint)
            print(
                f"   ...the maker is down for {FIFO_OUTAGE_SECONDS}s: each customer's next request waits, "
                "and none behind it goes ahead"
            )
            time.sleep(FIFO_OUTAGE_SECONDS)
            maker, _ = start_maker(db, port=maker_port, args=maker_args)
            processes.append(maker)
            fifo_in_order = show_fifo_order(client, sent)

            relay_outcomes, verified = relay_part(endpoint, client, processes)
        finally:
            for process in reversed(processes):
                process.stop()

    say("Summary")
    for status in ("OK", "REJECTED", "FAILED"):
        print(f"   {status:<9}{outcomes[status]}")
    print(f"   dead-letter queue: {len(kept)} message(s); took {time.monotonic() - started:.0f}s")
    print(f"   FIFO: {len(FIFO_GROUPS)} customers x {FIFO_COUNT} requests, each made in order: "
          f"{'yes' if fifo_in_order else 'NO'}")  # fmt: skip
    print(f"   sqs-relay: OK {relay_outcomes['OK']}, REJECTED {relay_outcomes['REJECTED']}; "
          f"signatures verified by the receiver: {verified} of {len(RELAY_MESSAGES)}")  # fmt: skip
    expected = Counter({"OK": 7, "REJECTED": 1, "FAILED": 1})
    relay_expected = Counter({"OK": len(RELAY_MESSAGES) - 1, "REJECTED": 1})
    relay_ok = relay_outcomes == relay_expected and verified == len(RELAY_MESSAGES)
    if outcomes != expected or len(kept) != 1 or not fifo_in_order or not relay_ok:
        print(
            f"   expected {dict(expected)}, 1 dead letter, FIFO order, and from the relay "
            f"{dict(relay_expected)}, every signature verified: something is wrong",
            file=sys.stderr,
        )
        return 1
    print("   every request ended as it should. Next: make run, or see README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
