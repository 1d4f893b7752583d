"""How fast the request queue drains on this machine, three ways, from the same depth: `make bench`.

Starts a local SQS (fauxqs, else moto's server; WIDGETS_LOCAL_SQS chooses) and the widget
maker as subprocesses. Before each drain it preloads the same N requests into fresh queues,
because a local SQS's cost per call can grow with the depth (moto's ReceiveMessage scans every
message of the queue), so only figures from the same depth compare. The drains:

1. raw: receive ten, DeleteMessageBatch them, no HTTP work: the queue's own limit here;
   raw-respond, the same plus a SendMessageBatch of their responses: the least SQS work any
   consumer must do;
2. consumer: widget_consumer.py with its defaults, a real subprocess, until every request
   has its response on the response queue;
3. one at a time: the 2015 seed's loop, on a sample of the first messages (it sleeps 2 s per poll).

CPU figures are each process's own usage (user + system, all threads, from /proc/<pid>/stat)
over the drain only, so startup is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from devtools.stack import Process, local_sqs_kind, local_sqs_version, start_consumer, start_maker, start_sqs
from widget_consumer import Settings
from widget_producer import SEND_THREADS, send_requests
from widgets.messages import OK, new_widget_id, parse_request, request_body, response_body
from widgets.sqs import MAX_BATCH, QueueUrls, SQSClient, delete_batch, ensure_queues, make_client

TARGET_CONSUMER_RAW = 0.8  # consumer/raw at least
TARGET_CONSUMER_SEED = 10.0  # consumer/one-at-a-time at least
TARGET_CPU_MS = 1.5  # consumer CPU ms per message under
SEED_SLEEP = 2.0  # seconds the seed slept after every poll
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
OUTCOME_LINE = re.compile(r" (OK|REJECTED|FAILED) message_id=")


@dataclass
class Drain:
    """One drain: how many messages from what depth, in how long, and the CPU each process spent."""

    name: str
    depth: int
    messages: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds during the drain: "client" (who drained), "sqs", "maker"

    @property
    def rate(self) -> float:
        """Return messages per second."""
        return self.messages / self.seconds

    def as_dict(self) -> dict[str, Any]:
        """Return the figures for the JSON report."""
        return {
            "depth": self.depth,
            "messages": self.messages,
            "seconds": round(self.seconds, 4),
            "rate": round(self.rate, 3),
            "cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()},
            "cpu_ms_per_message": {k: round(v * 1000 / self.messages, 3) for k, v in self.cpu.items()},
            "cpu_busy": {k: round(v / self.seconds, 3) for k, v in self.cpu.items()},
        }


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process pid (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def timed(name: str, depth: int, pids: dict[str, int], drain: Callable[[], int]) -> Drain:
    """Run drain(), which returns how many messages it drained; time it and take each pid's CPU."""
    before = {key: cpu_seconds(pid) for key, pid in pids.items()}
    started = time.perf_counter()
    messages = drain()
    seconds = time.perf_counter() - started
    cpu = {key: cpu_seconds(pid) - before[key] for key, pid in pids.items()}
    return Drain(name, depth, messages, seconds, cpu)


def queue_names(phase: str) -> tuple[str, str, str]:
    """Return a phase's own request, response and dead-letter queue names."""
    return f"bench-{phase}-requests", f"bench-{phase}-responses", f"bench-{phase}-dlq"


def fresh_queues(sqs: SQSClient, phase: str) -> QueueUrls:
    """Create a phase's three queues as the consumer does (same redrive policy)."""
    return ensure_queues(sqs, *queue_names(phase), max_receives=Settings.max_receives)


def drop_queues(sqs: SQSClient, urls: QueueUrls) -> None:
    """Delete a phase's queues and whatever is left in them."""
    for url in (urls.request, urls.response, urls.dead_letter):
        sqs.delete_queue(QueueUrl=url)


def visible(sqs: SQSClient, url: str) -> int:
    """Return how many messages a queue holds that can be received now."""
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def preload(sqs: SQSClient, url: str, count: int) -> int:
    """Send count requests as `widget_producer.py --count` does; return the depth reached."""
    result = send_requests(sqs, url, [new_widget_id() for _ in range(count)])
    if result.failed:
        raise RuntimeError(f"preload: {len(result.failed)} requests not sent: {result.failed[0]}")
    depth = visible(sqs, url)
    if depth != count:
        raise RuntimeError(f"preload: the queue holds {depth} messages, not {count}")
    return depth


def drain_raw(sqs: SQSClient, url: str, count: int) -> int:
    """Receive ten at a time and delete each batch in one call, no other work, until count are gone."""
    done = 0
    while done < count:
        messages = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=MAX_BATCH, WaitTimeSeconds=1, VisibilityTimeout=60
        ).get("Messages", [])
        if not messages:
            raise RuntimeError(f"raw drain: the queue ran dry after {done} of {count}")
        answer = delete_batch(sqs, url, [m["ReceiptHandle"] for m in messages])
        if answer.get("Failed"):
            raise RuntimeError(f"raw drain: deletes refused: {answer['Failed']}")
        done += len(messages)
    return done


def drain_raw_respond(sqs: SQSClient, urls: QueueUrls, count: int) -> int:
    """Like raw, plus a SendMessageBatch of their responses: the least SQS work of any consumer."""
    done = 0
    while done < count:
        messages = sqs.receive_message(
            QueueUrl=urls.request, MaxNumberOfMessages=MAX_BATCH, WaitTimeSeconds=1, VisibilityTimeout=60
        ).get("Messages", [])
        if not messages:
            raise RuntimeError(f"raw+respond drain: the queue ran dry after {done} of {count}")
        sqs.send_message_batch(
            QueueUrl=urls.response,
            Entries=[
                {"Id": str(i), "MessageBody": response_body(m["MessageId"], None, OK, 1)}
                for i, m in enumerate(messages)
            ],
        )
        delete_batch(sqs, urls.request, [m["ReceiptHandle"] for m in messages])
        done += len(messages)
    return done


def wait_for_outcomes(
    consumer: Process, sqs: SQSClient, response_url: str, count: int, outcomes: Counter[str]
) -> int:
    """Wait until the consumer has logged count outcomes and all their responses are on the queue.

    Counting the consumer's own outcome lines costs SQS nothing; the response queue is asked
    only at the end, since the consumer logs an outcome as it hands the response to its outbox
    (which sends within its 50 ms flush interval), and not often: on moto each ask scans the queue.
    """
    deadline = time.monotonic() + 60 + count * 0.2
    seen = 0
    while sum(outcomes.values()) < count:
        lines = consumer.lines[seen:]  # appended by the reader thread; a slice is a safe copy
        seen += len(lines)
        for line in lines:
            match = OUTCOME_LINE.search(line)
            if match:
                outcomes[match[1]] += 1
        if not consumer.running() or time.monotonic() > deadline:
            raise RuntimeError(f"consumer drain: {dict(outcomes)} of {count}:\n{consumer.output()[-3000:]}")
        if not lines:
            time.sleep(0.005)
    while True:
        time.sleep(0.025)
        if visible(sqs, response_url) >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"consumer drain: fewer than {count} responses on the response queue")
    return sum(outcomes.values())


def drain_one_at_a_time(sqs: SQSClient, urls: QueueUrls, maker_url: str, sample: int) -> int:
    """The 2015 seed's loop, faithfully: poll, handle what came, sleep 2 s; until sample are handled.

    Like the seed, each poll is a short poll for SQS's default of one message, and the 2 s sleep
    follows every poll whatever it brought: at most one message per 2 s plus the handling time.
    Each message is POSTed with a new connection (requests.post, no session), its response sent
    with SendMessage, and the request deleted with DeleteMessage. The time covers sample whole
    poll-handle-sleep cycles, the seed's steady state.
    """
    done = 0
    while done < sample:
        for message in sqs.receive_message(QueueUrl=urls.request).get("Messages", []):
            widget_id = parse_request(message["Body"])
            answer = requests.post(
                maker_url,
                json={"widget_id": widget_id},
                headers={"Idempotency-Key": message["MessageId"]},
                timeout=10,
            )
            answer.raise_for_status()
            body = response_body(message["MessageId"], widget_id, OK, 1, widget=answer.json())
            sqs.send_message(QueueUrl=urls.response, MessageBody=body)
            sqs.delete_message(QueueUrl=urls.request, ReceiptHandle=message["ReceiptHandle"])
            done += 1
        time.sleep(SEED_SLEEP)
    return done


def measure_producer(sqs: SQSClient, count: int) -> dict[str, float]:
    """Time count sends into empty queues two ways: as `--count` sends them, and one SendMessage each."""
    batch_url = sqs.create_queue(QueueName="bench-produce-batch")["QueueUrl"]
    single_url = sqs.create_queue(QueueName="bench-produce-single")["QueueUrl"]
    try:
        started = time.perf_counter()
        result = send_requests(sqs, batch_url, [new_widget_id() for _ in range(count)])
        batch_seconds = time.perf_counter() - started
        if result.failed:
            raise RuntimeError(f"producer: {len(result.failed)} requests not sent: {result.failed[0]}")
        started = time.perf_counter()
        for _ in range(count):
            sqs.send_message(QueueUrl=single_url, MessageBody=request_body(new_widget_id()))
        single_seconds = time.perf_counter() - started
    finally:
        sqs.delete_queue(QueueUrl=batch_url)
        sqs.delete_queue(QueueUrl=single_url)
    batch, single = count / batch_seconds, count / single_seconds
    return {"batch_rate": round(batch, 1), "single_rate": round(single, 1), "ratio": round(batch / single, 2)}


def run(count: int, sample: int, sqs_kind: str) -> dict[str, Any]:
    """Start the local SQS and the maker, time the producer and the three drains; return the figures."""
    processes: list[Process] = []
    drains: dict[str, Drain] = {}
    outcomes: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="widgets-bench-") as tmp:
        try:
            sqs_process, endpoint = start_sqs(kind=sqs_kind)
            processes.append(sqs_process)
            maker, maker_base = start_maker(Path(tmp) / "widgets.db")
            processes.append(maker)
            maker_url = f"{maker_base}/add"
            servers = {"sqs": sqs_process.popen.pid, "maker": maker.popen.pid}
            here = {"client": os.getpid(), **servers}
            sqs = make_client(None, endpoint, max_connections=SEND_THREADS + 2)

            producer = measure_producer(sqs, count)

            urls = fresh_queues(sqs, "raw")
            depth = preload(sqs, urls.request, count)
            drains["raw"] = timed("raw", depth, here, lambda: drain_raw(sqs, urls.request, count))
            drop_queues(sqs, urls)

            urls = fresh_queues(sqs, "raw-respond")
            depth = preload(sqs, urls.request, count)
            drains["raw_respond"] = timed(
                "raw_respond", depth, here, lambda: drain_raw_respond(sqs, urls, count)
            )
            drop_queues(sqs, urls)

            names = queue_names("consumer")
            urls = fresh_queues(sqs, "consumer")
            depth = preload(sqs, urls.request, count)
            queue_args = ["--sqs-request-queue", names[0], "--sqs-response-queue", names[1]]
            consumer = start_consumer(endpoint, maker_url, [*queue_args, "--dead-letter-queue", names[2]])
            processes.append(consumer)
            startup_cpu = cpu_seconds(consumer.popen.pid)
            drains["consumer"] = timed(
                "consumer",
                depth,
                {"client": consumer.popen.pid, **servers},
                lambda: wait_for_outcomes(consumer, sqs, urls.response, count, outcomes),
            )
            consumer.stop()
            processes.remove(consumer)
            drop_queues(sqs, urls)

            urls = fresh_queues(sqs, "one-at-a-time")
            depth = preload(sqs, urls.request, count)
            drains["one_at_a_time"] = timed(
                "one_at_a_time", depth, here, lambda: drain_one_at_a_time(sqs, urls, maker_url, sample)
            )
            drop_queues(sqs, urls)
        finally:
            for process in reversed(processes):
                process.stop()

    raw, cons, seed = drains["raw"], drains["consumer"], drains["one_at_a_time"]
    cpu_ms = cons.cpu["client"] * 1000 / cons.messages
    ratios = {
        "consumer_raw": cons.rate / raw.rate,
        "consumer_one_at_a_time": cons.rate / seed.rate,
        "consumer_raw_respond": cons.rate / drains["raw_respond"].rate,
    }
    return {
        "count": count,
        "sample": sample,
        "cpus": os.cpu_count(),
        "local_sqs": f"{sqs_kind} {local_sqs_version(sqs_kind)}",
        "drains": {name: drain.as_dict() for name, drain in drains.items()},
        "consumer_outcomes": dict(outcomes),
        "consumer_startup_cpu_seconds": round(startup_cpu, 3),
        "ratios": {name: round(value, 3) for name, value in ratios.items()},
        "consumer_cpu_ms_per_message": round(cpu_ms, 3),
        "consumer_cpu_seconds_per_1000": round(cpu_ms, 3),
        "producer": producer,
        "targets_met": {
            "consumer_raw": ratios["consumer_raw"] >= TARGET_CONSUMER_RAW,
            "consumer_one_at_a_time": ratios["consumer_one_at_a_time"] >= TARGET_CONSUMER_SEED,
            "consumer_cpu": cpu_ms < TARGET_CPU_MS,
        },
    }


def report(figures: dict[str, Any]) -> str:
    """Return the figures as a table for people."""
    count, sample, met = figures["count"], figures["sample"], figures["targets_met"]
    lines = [
        f"widget pipeline benchmark: {count} requests preloaded before each drain; "
        f"local SQS {figures['local_sqs']}, {figures['cpus']} CPUs",
        "",
        f"{'drain':<14}{'depth':>6}{'messages':>9}{'seconds':>9}{'msg/s':>9}"
        f"   CPU ms/msg:{'client':>7}{'sqs':>6}{'maker':>6}   CPU busy %:{'client':>7}{'sqs':>6}{'maker':>6}",
    ]
    for name, d in figures["drains"].items():
        per, busy = d["cpu_ms_per_message"], d["cpu_busy"]
        lines.append(
            f"{name.replace('_', '-'):<14}{d['depth']:>6}{d['messages']:>9}"
            f"{d['seconds']:>9.2f}{d['rate']:>9.2f}"
            f"{'':>14}{per['client']:>7.2f}{per['sqs']:>6.2f}{per['maker']:>6.2f}"
            f"{'':>14}{busy['client'] * 100:>7.0f}{busy['sqs'] * 100:>6.0f}{busy['maker'] * 100:>6.0f}"
        )
    ratios, cpu_ms = figures["ratios"], figures["consumer_cpu_ms_per_message"]
    producer = figures["producer"]
    verdict = {True: "met", False: "MISSED"}
    lines += [
        "  client: the process that drains (this one for raw and one-at-a-time, the consumer for consumer)",
        f"  one-at-a-time: a sample, the first {sample} messages from depth {count}, timed over {sample} "
        f"whole cycles of the seed's loop (short poll for 1 message, handle it, sleep {SEED_SLEEP:g} s)",
        f"  consumer outcomes: {figures['consumer_outcomes']}",
        "",
        f"consumer/raw            {ratios['consumer_raw']:>8.2f}   target >= {TARGET_CONSUMER_RAW:g}: "
        f"{verdict[met['consumer_raw']]}",
        f"consumer/one-at-a-time  {ratios['consumer_one_at_a_time']:>8.1f}   target >= "
        f"{TARGET_CONSUMER_SEED:g}: {verdict[met['consumer_one_at_a_time']]}",
        f"consumer/raw-respond    {ratios['consumer_raw_respond']:>8.2f}   (no target: raw plus the "
        "responses any consumer must send, single-threaded)",
        f"consumer CPU            {cpu_ms:>8.3f} ms/message = {cpu_ms:.3f} s per 1000 messages   "
        f"target < {TARGET_CPU_MS:g} ms: {verdict[met['consumer_cpu']]}",
        f"  (drain only; the consumer's startup took {figures['consumer_startup_cpu_seconds']:.2f} s CPU)",
        "",
        f"producer, {count} requests: --count (SendMessageBatch, {SEND_THREADS} threads) "
        f"{producer['batch_rate']:.1f} msg/s; one SendMessage per request {producer['single_rate']:.1f} "
        f"msg/s; {producer['ratio']:.2f}x",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its table, and write its JSON if asked."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=500, help="requests preloaded before each drain")
    parser.add_argument(
        "--sample", type=int, default=20, help="messages the one-at-a-time drain handles (2 s each)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if args.count < 1 or args.sample < 1:
        parser.error("--count and --sample must be at least 1")
    try:
        sqs_kind = local_sqs_kind()
    except ValueError as error:
        parser.error(str(error))
    figures = run(args.count, min(args.sample, args.count), sqs_kind)
    print(report(figures), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
