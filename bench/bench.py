"""How fast the request queue drains on this machine, several ways, from the same depth: `make bench`.

Starts a local SQS (fauxqs, else moto's server; WIDGETS_LOCAL_SQS chooses) and the widget
maker as subprocesses. Before each drain it preloads the same N requests into fresh queues,
because a local SQS's cost per call can grow with the depth (moto's ReceiveMessage scans every
message of the queue), so only figures from the same depth compare. The drains:

1. raw: receive ten, DeleteMessageBatch them, no HTTP work: the queue's own limit here;
   raw-respond, the same plus a SendMessageBatch of their responses: the least SQS work any
   consumer must do (single-threaded);
2. consumer: widget_consumer.py with its defaults, a real subprocess, until every request
   has its response on the response queue; consumer-metrics, the same with --metrics-port
   (when widget_consumer.py lists it in --help), to see what its metrics cost in CPU;
   relay: sqs_relay.py, the general face, signing each call with one secret (WEBHOOK_SECRET),
   forwarding bodies {"widget_id": ...} as they are to the same maker's /add, so the maker does the
   same work per call as for the consumer; in the order consumer, relay, relay-2, consumer-2, and
   relay/consumer is taken over both pairs, so a change in the machine's load during the four
   drains weighs on both sides alike; relay-verified, the relay to a second maker given the secret,
   which checks each signature;
3. raw-respond-latency and consumer-latency: raw-respond and consumer through
   devtools/latency_proxy.py, which adds --sqs-latency-ms (20) to every SQS call, as a round
   trip to Amazon SQS would; the consumer keeps its rate there only with calls in flight at once;
4. one at a time: the 2015 seed's loop, on a sample of the first messages (it sleeps 2 s per poll).

Then the maker on each store, where PostgreSQL's server programs are installed (a throwaway server
of its own, default settings, durable): N new widgets POSTed straight to the maker by ten callers
(no SQS) on SQLite, on PostgreSQL, and split over two makers on one PostgreSQL; and the consumer
drain with the maker on PostgreSQL. PostgreSQL's CPU is that of all its processes.

CPU figures are each process's own usage (user + system, all threads, from /proc/<pid>/stat)
over the drain only, so startup is left out. Signing is also measured on its own: the CPU time
(time.process_time) of Signer.headers over --sign-calls calls.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.client
import json
import os
import re
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from devtools.postgres import PostgresServer, server_version, unavailable_reason
from devtools.stack import (
    PYTHON,
    Process,
    free_port,
    local_sqs_kind,
    local_sqs_version,
    run_script,
    start_consumer,
    start_latency_proxy,
    start_maker,
    start_sqs,
)
from widgets.consumer import Settings
from widgets.consumer.signing import SECRET_ENV, Signer, parse_secrets
from widgets.messages import OK, new_widget_id, parse_request, request_body, response_body
from widgets.producer import SEND_THREADS, send_requests
from widgets.sqs import MAX_BATCH, QueueUrls, SQSClient, delete_batch, ensure_queues, make_client

TARGET_CONSUMER_RAW = 0.8  # consumer/raw at least
TARGET_CONSUMER_RAW_RESPOND = 0.6  # consumer/raw-respond at least (issue 8)
TARGET_CONSUMER_SEED = 10.0  # consumer/one-at-a-time at least
TARGET_CPU_MS = 1.5  # consumer CPU ms per message under
TARGET_CPU_MS_ISSUE_8 = 1.0  # consumer CPU ms per message at most (issue 8)
TARGET_MAKER_CPU_MS = 1.0  # maker CPU ms per request during the consumer drain, at most (issue 8)
TARGET_METRICS_CPU = 1.05  # consumer CPU per message with --metrics-port / without, at most (issue 11)
TARGET_LATENCY_CONSUMER = 0.8  # consumer rate with the added SQS latency / without, at least (issue 8)
TARGET_RELAY_CONSUMER = 0.95  # relay (general face, signing) rate / consumer rate, at least (issue 18)
TARGET_SIGNING_MS = 0.05  # CPU ms of signing one call, at most (issue 18)
SIGN_CALLS = 100_000  # calls of Signer.headers timed
SIGNED_BODY_BYTES = 1024  # the body the signing figure is about; the relay drain's is ~50 bytes
SEED_SLEEP = 2.0  # seconds the seed slept after every poll
CALLERS = 10  # callers posting straight to the maker(s): as many as the consumer has workers
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


def stat_fields(pid: int) -> list[str]:
    """Return the fields of /proc/<pid>/stat after the command name: state, parent, ... (man 5 proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds process pid (all its threads) has used so far."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def timed(
    name: str,
    depth: int,
    pids: dict[str, int],
    drain: Callable[[], int],
    readers: dict[str, Callable[[], float]] | None = None,
) -> Drain:
    """Run drain(), which returns how many messages it drained; time it and take each pid's CPU
    (and each reader's: a function returning CPU seconds used so far, for a figure of several processes)."""
    sources = {key: functools.partial(cpu_seconds, pid) for key, pid in pids.items()} | (readers or {})
    before = {key: read() for key, read in sources.items()}
    started = time.perf_counter()
    messages = drain()
    seconds = time.perf_counter() - started
    cpu = {key: read() - before[key] for key, read in sources.items()}
    return Drain(name, depth, messages, seconds, cpu)


def queue_names(phase: str) -> tuple[str, str, str]:
    """Return a phase's own request, response and dead-letter queue names."""
    return f"bench-{phase}-requests", f"bench-{phase}-responses", f"bench-{phase}-dlq"


def fresh_queues(sqs: SQSClient, phase: str) -> QueueUrls:
    """Create a phase's three queues as the consumer does (same redrive policy)."""
    return ensure_queues(sqs, *queue_names(phase), max_receives=Settings.max_receives)


def drop_queues(sqs: SQSClient, urls: QueueUrls) -> None:
    """Delete a phase's queues and whatever is left in them."""
    for url in (urls.request, response_queue(urls), urls.dead_letter):
        sqs.delete_queue(QueueUrl=url)


def response_queue(urls: QueueUrls) -> str:
    """Return the response queue of a bench phase (each has one)."""
    if urls.response is None:
        raise ValueError("a bench phase needs a response queue")
    return urls.response


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


def preload_bodies(sqs: SQSClient, url: str, bodies: list[str]) -> int:
    """Send bodies as they are, in batches of ten from several threads; return the depth reached."""

    def send(chunk: list[str]) -> None:
        entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)]
        answer = sqs.send_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
        if answer.get("Failed"):
            raise RuntimeError(f"preload: bodies not sent: {answer['Failed'][0]}")

    with ThreadPoolExecutor(SEND_THREADS) as pool:
        list(pool.map(send, [bodies[i : i + MAX_BATCH] for i in range(0, len(bodies), MAX_BATCH)]))
    depth = visible(sqs, url)
    if depth != len(bodies):
        raise RuntimeError(f"preload: the queue holds {depth} messages, not {len(bodies)}")
    return depth


def maker_bodies(count: int) -> list[str]:
    """Return count bodies the maker's /add takes as they are: {"widget_id": ...}, each a new widget."""
    return [json.dumps({"widget_id": new_widget_id()}) for _ in range(count)]


def new_secret() -> str:
    """Return a new Standard Webhooks secret: whsec_ and the base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def measure_signing(calls: int) -> dict[str, Any]:
    """Return the CPU ms of one Signer.headers call, averaged over calls: one secret on a 1 KiB body
    (the target's figure), one on the relay drain's body ({"widget_id"}), two on the 1 KiB body."""
    small = maker_bodies(1)[0].encode()
    large = json.dumps({"note": "x" * SIGNED_BODY_BYTES})[:SIGNED_BODY_BYTES].encode()
    cases = {"one_secret_1kib": (1, large), "one_secret_small": (1, small), "two_secrets_1kib": (2, large)}
    figures: dict[str, Any] = {"calls": calls, "small_body_bytes": len(small)}
    for name, (keys, body) in cases.items():
        signer = Signer(parse_secrets(" ".join(new_secret() for _ in range(keys))))
        webhook_id = new_widget_id()
        started = time.process_time()
        for _ in range(calls):
            signer.headers(webhook_id, body)
        figures[name] = round((time.process_time() - started) * 1000 / calls, 5)
    return figures


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
            QueueUrl=response_queue(urls),
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
            sqs.send_message(QueueUrl=response_queue(urls), MessageBody=body)
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


def consumer_supports(flag: str) -> bool:
    """Tell whether widget_consumer.py lists flag in its --help (options other work adds later)."""
    result = run_script("widget_consumer.py", ["--help"], timeout=60)
    return flag in result.stdout


class Bench:
    """What the drains of one benchmark run share, and the drains measured so far."""

    def __init__(self, count: int, sqs: SQSClient, maker_url: str, servers: dict[str, int]) -> None:
        """Hold what every drain needs: the size, the SQS client, the maker, the servers' pids."""
        self.count = count
        self.sqs = sqs
        self.maker_url = maker_url
        self.servers = servers
        self.drains: dict[str, Drain] = {}
        self.outcomes: dict[str, Counter[str]] = {}
        self.startup_cpu: dict[str, float] = {}
        self.stores: dict[str, Any] = {}  # the maker on each store (measure_stores)
        self.signing: dict[str, Any] = {}  # signing's CPU per call (measure_signing)

    def drain_here(
        self, name: str, drain: Callable[[QueueUrls], int], extra: dict[str, int] | None = None
    ) -> None:
        """Preload fresh queues, then time drain(urls) run by this process."""
        urls = fresh_queues(self.sqs, name)
        depth = preload(self.sqs, urls.request, self.count)
        pids = {"client": os.getpid(), **self.servers, **(extra or {})}
        self.drains[name] = timed(name, depth, pids, lambda: drain(urls))
        drop_queues(self.sqs, urls)

    def drain_consumer(
        self,
        name: str,
        endpoint: str,
        args: Sequence[str] = (),
        extra: dict[str, int] | None = None,
        maker_url: str | None = None,
        readers: dict[str, Callable[[], float]] | None = None,
    ) -> None:
        """Preload fresh queues, start a consumer on endpoint with args, time it until all are answered
        (calling maker_url, else the bench's maker; readers: more CPU figures, as timed() takes)."""
        names = queue_names(name)
        urls = fresh_queues(self.sqs, name)
        depth = preload(self.sqs, urls.request, self.count)
        queue_args = ["--sqs-request-queue", names[0], "--sqs-response-queue", names[1]]
        consumer = start_consumer(
            endpoint, maker_url or self.maker_url, [*queue_args, "--dead-letter-queue", names[2], *args]
        )
        self.time_process(name, consumer, urls, depth, extra, readers)

    def drain_relay(
        self,
        name: str,
        endpoint: str,
        secret: str,
        maker_url: str | None = None,
        extra: dict[str, int] | None = None,
    ) -> None:
        """Preload fresh queues with bodies the maker takes as they are, start sqs_relay.py toward
        maker_url (else the bench's maker), signing with secret, and time it until all are answered."""
        names = queue_names(name)
        urls = fresh_queues(self.sqs, name)
        depth = preload_bodies(self.sqs, urls.request, maker_bodies(self.count))
        argv = [
            PYTHON, "sqs_relay.py", "--endpoint-url", endpoint, "--target-url", maker_url or self.maker_url,
            "--queue", names[0], "--response-queue", names[1], "--dead-letter-queue", names[2],
        ]  # fmt: skip
        relay = Process(name, argv, env={SECRET_ENV: secret})
        relay.wait_for(r"consuming ")
        self.time_process(name, relay, urls, depth, extra)

    def time_process(
        self,
        name: str,
        process: Process,
        urls: QueueUrls,
        depth: int,
        extra: dict[str, int] | None = None,
        readers: dict[str, Callable[[], float]] | None = None,
    ) -> None:
        """Time a consumer or relay until it answered every request; then stop it, drop the queues."""
        try:
            self.startup_cpu[name] = cpu_seconds(process.popen.pid)
            outcomes = self.outcomes[name] = Counter()
            self.drains[name] = timed(
                name,
                depth,
                {"client": process.popen.pid, **self.servers, **(extra or {})},
                lambda: wait_for_outcomes(process, self.sqs, response_queue(urls), self.count, outcomes),
                readers,
            )
        finally:
            process.stop()
        drop_queues(self.sqs, urls)


def run(count: int, sample: int, sqs_kind: str, latency_ms: float, sign_calls: int) -> dict[str, Any]:
    """Start the local SQS and the maker, time the producer, signing and every drain; return the figures."""
    processes: list[Process] = []
    with_metrics = consumer_supports("--metrics-port")
    with tempfile.TemporaryDirectory(prefix="widgets-bench-") as tmp:
        try:
            sqs_process, endpoint = start_sqs(kind=sqs_kind)
            processes.append(sqs_process)
            maker, maker_base = start_maker(Path(tmp) / "widgets.db")
            processes.append(maker)
            maker_url = f"{maker_base}/add"
            sqs = make_client(None, endpoint, max_connections=SEND_THREADS + 2)
            bench = Bench(count, sqs, maker_url, {"sqs": sqs_process.popen.pid, "maker": maker.popen.pid})

            producer = measure_producer(sqs, count)
            bench.signing = measure_signing(sign_calls)
            bench.drain_here("raw", lambda urls: drain_raw(sqs, urls.request, count))
            bench.drain_here("raw_respond", lambda urls: drain_raw_respond(sqs, urls, count))
            bench.drain_consumer("consumer", endpoint)
            # The relay to the same maker, between two consumer drains (ABBA): the ratio the issue's
            # target is about, from both pairs.
            secret = new_secret()
            bench.drain_relay("relay", endpoint, secret)
            bench.drain_relay("relay_2", endpoint, secret)
            bench.drain_consumer("consumer_2", endpoint)
            # The same, to a maker of its own that checks each signature (it costs the maker CPU).
            verifier, verifier_base = start_maker(Path(tmp) / "verifier.db", env={SECRET_ENV: secret})
            processes.append(verifier)
            bench.drain_relay(
                "relay_verified", endpoint, secret, f"{verifier_base}/add", {"maker": verifier.popen.pid}
            )
            verifier.stop()
            processes.remove(verifier)
            if with_metrics:
                bench.drain_consumer("consumer_metrics", endpoint, ["--metrics-port", str(free_port())])
            if latency_ms > 0:
                proxy, slow_endpoint = start_latency_proxy(endpoint, latency_ms)
                processes.append(proxy)
                slow_sqs = make_client(None, slow_endpoint)
                proxy_pid = {"proxy": proxy.popen.pid}
                bench.drain_here(
                    "raw_respond_latency", lambda urls: drain_raw_respond(slow_sqs, urls, count), proxy_pid
                )
                bench.drain_consumer("consumer_latency", slow_endpoint, extra=proxy_pid)
                proxy.stop()
                processes.remove(proxy)
            bench.stores = measure_stores(bench, endpoint, maker_base)
            bench.drain_here("one_at_a_time", lambda urls: drain_one_at_a_time(sqs, urls, maker_url, sample))
        finally:
            for process in reversed(processes):
                process.stop()
    return figures_of(bench, count, sample, sqs_kind, latency_ms, producer)


def per_message_ms(drain: Drain, key: str) -> float:
    """Return a process's CPU milliseconds per message over a drain."""
    return drain.cpu[key] * 1000 / drain.messages


def pooled_rate(drains: Sequence[Drain]) -> float:
    """Return the messages per second of several drains taken together."""
    return sum(d.messages for d in drains) / sum(d.seconds for d in drains)


def pooled_cpu_ms(drains: Sequence[Drain], key: str = "client") -> float:
    """Return a process's CPU milliseconds per message over several drains taken together."""
    return sum(d.cpu[key] for d in drains) * 1000 / sum(d.messages for d in drains)


def figures_of(
    bench: Bench, count: int, sample: int, sqs_kind: str, latency_ms: float, producer: dict[str, float]
) -> dict[str, Any]:
    """Return the run's figures: every drain, the ratios the targets are about, and which are met."""
    drains = bench.drains
    raw, cons, seed = drains["raw"], drains["consumer"], drains["one_at_a_time"]
    cpu_ms = per_message_ms(cons, "client")
    maker_ms = per_message_ms(cons, "maker")
    verified = drains["relay_verified"]
    relays, consumers = [drains["relay"], drains["relay_2"]], [cons, drains["consumer_2"]]
    relay_cpu_ms, consumers_cpu_ms = pooled_cpu_ms(relays), pooled_cpu_ms(consumers)
    ratios = {
        "consumer_raw": cons.rate / raw.rate,
        "consumer_one_at_a_time": cons.rate / seed.rate,
        "consumer_raw_respond": cons.rate / drains["raw_respond"].rate,
        "relay_consumer": pooled_rate(relays) / pooled_rate(consumers),
        "relay_verified_consumer": verified.rate / pooled_rate(consumers),
        "relay_cpu": relay_cpu_ms / consumers_cpu_ms,
    }
    signing_ms = bench.signing["one_secret_1kib"]
    metrics_cpu = latency_consumer = latency_raw_respond = None
    if "consumer_metrics" in drains:
        metrics_cpu = per_message_ms(drains["consumer_metrics"], "client") / cpu_ms
    if "consumer_latency" in drains:
        latency_consumer = drains["consumer_latency"].rate / cons.rate
        latency_raw_respond = drains["raw_respond_latency"].rate / drains["raw_respond"].rate
    optional = {
        "metrics_cpu": metrics_cpu,
        "latency_consumer": latency_consumer,
        "latency_raw_respond": latency_raw_respond,
    }
    return {
        "count": count,
        "sample": sample,
        "cpus": os.cpu_count(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "local_sqs": f"{sqs_kind} {local_sqs_version(sqs_kind)}",
        "sqs_latency_ms": latency_ms,
        "drains": {name: drain.as_dict() for name, drain in drains.items()},
        "consumer_outcomes": {name: dict(outcomes) for name, outcomes in bench.outcomes.items()},
        "consumer_startup_cpu_seconds": round(bench.startup_cpu["consumer"], 3),
        "ratios": {
            **{name: round(value, 3) for name, value in ratios.items()},
            **{name: None if value is None else round(value, 3) for name, value in optional.items()},
        },
        "consumer_cpu_ms_per_message": round(cpu_ms, 3),
        "consumer_cpu_seconds_per_1000": round(cpu_ms, 3),
        "maker_cpu_ms_per_request": round(maker_ms, 3),
        "relay_cpu_ms_per_message": round(relay_cpu_ms, 3),  # relay and relay-2
        "consumers_cpu_ms_per_message": round(consumers_cpu_ms, 3),  # consumer and consumer-2
        "relay_verified_maker_cpu_ms_per_request": round(per_message_ms(verified, "maker"), 3),
        "signing": bench.signing,
        "producer": producer,
        "stores": bench.stores,
        # None: not measured in this run (the consumer has no --metrics-port, or --sqs-latency-ms 0).
        "targets_met": {
            "consumer_raw": ratios["consumer_raw"] >= TARGET_CONSUMER_RAW,
            "consumer_raw_respond": ratios["consumer_raw_respond"] >= TARGET_CONSUMER_RAW_RESPOND,
            "consumer_one_at_a_time": ratios["consumer_one_at_a_time"] >= TARGET_CONSUMER_SEED,
            "consumer_cpu": cpu_ms < TARGET_CPU_MS,
            "consumer_cpu_issue_8": cpu_ms <= TARGET_CPU_MS_ISSUE_8,
            "maker_cpu": maker_ms <= TARGET_MAKER_CPU_MS,
            "relay_consumer": ratios["relay_consumer"] >= TARGET_RELAY_CONSUMER,
            "signing_cpu": signing_ms <= TARGET_SIGNING_MS,
            "metrics_cpu": None if metrics_cpu is None else metrics_cpu <= TARGET_METRICS_CPU,
            "latency_consumer": None
            if latency_consumer is None
            else latency_consumer >= TARGET_LATENCY_CONSUMER,
        },
    }


def report(figures: dict[str, Any]) -> str:
    """Return the figures as a table for people."""
    count, sample, met = figures["count"], figures["sample"], figures["targets_met"]
    latency_ms = figures["sqs_latency_ms"]
    load = figures["load_average"]
    lines = [
        f"widget pipeline benchmark: {count} requests preloaded before each drain; "
        f"local SQS {figures['local_sqs']}, {figures['cpus']} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at the end",
        "",
        f"{'drain':<20}{'depth':>6}{'messages':>9}{'seconds':>9}{'msg/s':>9}"
        f"   CPU ms/msg:{'client':>7}{'sqs':>6}{'maker':>6}   CPU busy %:{'client':>7}{'sqs':>6}{'maker':>6}",
    ]
    for name, d in figures["drains"].items():
        per, busy = d["cpu_ms_per_message"], d["cpu_busy"]
        lines.append(
            f"{name.replace('_', '-'):<20}{d['depth']:>6}{d['messages']:>9}"
            f"{d['seconds']:>9.2f}{d['rate']:>9.2f}"
            f"{'':>14}{per['client']:>7.2f}{per['sqs']:>6.2f}{per['maker']:>6.2f}"
            f"{'':>14}{busy['client'] * 100:>7.0f}{busy['sqs'] * 100:>6.0f}{busy['maker'] * 100:>6.0f}"
        )
    ratios, cpu_ms = figures["ratios"], figures["consumer_cpu_ms_per_message"]
    producer = figures["producer"]
    verdict = {True: "met", False: "MISSED", None: "n/a"}
    lines += [
        "  client: the process that drains (this one for raw, raw-respond and one-at-a-time; the consumer "
        "for consumer drains)",
        f"  one-at-a-time: a sample, the first {sample} messages from depth {count}, timed over {sample} "
        f"whole cycles of the seed's loop (short poll for 1 message, handle it, sleep {SEED_SLEEP:g} s)",
        "  consumer-metrics: the consumer with --metrics-port; "
        + (
            "measured"
            if "consumer_metrics" in figures["drains"]
            else "n/a: widget_consumer.py has no --metrics-port"
        ),
    ]
    if latency_ms > 0:
        proxy_busy = [
            figures["drains"][name]["cpu_busy"]["proxy"]
            for name in ("raw_respond_latency", "consumer_latency")
        ]
        lines.append(
            f"  -latency: through devtools/latency_proxy.py, {latency_ms:g} ms added to every SQS call "
            f"(the proxy's CPU busy: {proxy_busy[0] * 100:.0f}% and {proxy_busy[1] * 100:.0f}%)"
        )
    else:
        lines.append("  -latency drains: n/a (--sqs-latency-ms 0)")
    lines += [
        f"  consumer outcomes: {figures['consumer_outcomes']}",
        "",
        f"consumer/raw            {ratios['consumer_raw']:>8.2f}   target >= {TARGET_CONSUMER_RAW:g}: "
        f"{verdict[met['consumer_raw']]}",
        f"consumer/raw-respond    {ratios['consumer_raw_respond']:>8.2f}   target >= "
        f"{TARGET_CONSUMER_RAW_RESPOND:g} (issue 8): {verdict[met['consumer_raw_respond']]}",
        f"consumer/one-at-a-time  {ratios['consumer_one_at_a_time']:>8.1f}   target >= "
        f"{TARGET_CONSUMER_SEED:g}: {verdict[met['consumer_one_at_a_time']]}",
        f"consumer CPU            {cpu_ms:>8.3f} ms/message = {cpu_ms:.3f} s per 1000 messages   "
        f"target < {TARGET_CPU_MS:g} ms: {verdict[met['consumer_cpu']]}; <= {TARGET_CPU_MS_ISSUE_8:g} ms "
        f"(issue 8): {verdict[met['consumer_cpu_issue_8']]}",
        f"  (drain only; the consumer's startup took {figures['consumer_startup_cpu_seconds']:.2f} s CPU)",
        f"maker CPU               {figures['maker_cpu_ms_per_request']:>8.3f} ms/request during the consumer "
        f"drain   target <= {TARGET_MAKER_CPU_MS:g} ms: {verdict[met['maker_cpu']]}",
        f"metrics CPU             {ratio_text(ratios['metrics_cpu'], 3)}   consumer CPU per message with "
        f"--metrics-port / without, target <= {TARGET_METRICS_CPU:g}: {verdict[met['metrics_cpu']]}",
        *relay_report(figures, verdict),
        f"latency/no latency      {ratio_text(ratios['latency_consumer'], 2)}   the consumer's rate with "
        f"{latency_ms:g} ms per SQS call / without, target >= {TARGET_LATENCY_CONSUMER:g}: "
        f"{verdict[met['latency_consumer']]}",
        f"  raw-respond: {ratio_text(ratios['latency_raw_respond'], 2).strip()} (no target: single-threaded, "
        "three calls in a row per ten messages)",
        "",
        f"producer, {count} requests: --count (SendMessageBatch, {SEND_THREADS} threads) "
        f"{producer['batch_rate']:.1f} msg/s; one SendMessage per request {producer['single_rate']:.1f} "
        f"msg/s; {producer['ratio']:.2f}x",
        "",
        *stores_report(figures["stores"], count),
    ]
    return "\n".join(lines)


def relay_report(figures: dict[str, Any], verdict: dict[bool | None, str]) -> list[str]:
    """Return the lines comparing sqs-relay with the widget consumer, and signing's own cost."""
    ratios, met, signing = figures["ratios"], figures["targets_met"], figures["signing"]
    return [
        f"relay/consumer          {ratios['relay_consumer']:>8.2f}   sqs-relay (signing, one secret) / the "
        f"widget consumer, same maker, same depth, target >= {TARGET_RELAY_CONSUMER:g} (issue 18): "
        f"{verdict[met['relay_consumer']]}",
        "  (msg/s of relay and relay-2 / consumer and consumer-2, drained in that order: consumer, relay, "
        "relay-2, consumer-2)",
        f"  CPU: relay {figures['relay_cpu_ms_per_message']:.3f} ms/message, consumer "
        f"{figures['consumers_cpu_ms_per_message']:.3f} ({ratios['relay_cpu']:.2f}x)",
        "  relay-verified (the maker checking each signature) / consumer: "
        f"{ratios['relay_verified_consumer']:.2f}; "
        f"maker CPU {figures['relay_verified_maker_cpu_ms_per_request']:.3f} ms/request, "
        f"{figures['maker_cpu_ms_per_request']:.3f} without checking",
        f"signing CPU             {signing['one_secret_1kib']:>8.4f} ms/message   Signer.headers, one "
        f"secret, {SIGNED_BODY_BYTES}-byte body, {signing['calls']:,} calls, target <= "
        f"{TARGET_SIGNING_MS:g} ms (issue 18): {verdict[met['signing_cpu']]}",
        f"  {signing['small_body_bytes']}-byte body (the relay drain's): "
        f"{signing['one_secret_small']:.4f} ms; "
        f"two secrets, {SIGNED_BODY_BYTES} bytes: {signing['two_secrets_1kib']:.4f} ms",
    ]


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds of a process and of its children, those running and those it has reaped."""
    fields = stat_fields(pid)
    ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            child = stat_fields(int(entry.name))
        except OSError:  # gone meanwhile
            continue
        if int(child[1]) == pid:
            ticks += int(child[11]) + int(child[12])
    return ticks / CLOCK_TICKS


def post_widgets(bases: Sequence[str], count: int, callers: int = CALLERS) -> int:
    """POST count new widgets straight to the makers at bases, caller i to bases[i % len(bases)], each
    caller on one kept-alive connection; return how many were made."""

    def call(caller: int) -> int:
        address = urlsplit(bases[caller % len(bases)])
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
        share = count // callers + (caller < count % callers)
        try:
            for _ in range(share):
                body = json.dumps({"widget_id": new_widget_id()})
                connection.request("POST", "/add", body, {"Content-Type": "application/json"})
                answer = connection.getresponse()
                answer.read()
                if answer.status != 201:
                    raise RuntimeError(f"maker at {bases[caller % len(bases)]} answered {answer.status}")
        finally:
            connection.close()
        return share

    with ThreadPoolExecutor(callers) as pool:
        return sum(pool.map(call, range(callers)))


def measure_stores(bench: Bench, endpoint: str, sqlite_base: str) -> dict[str, Any]:
    """Time the maker on SQLite, on PostgreSQL, and two makers on one PostgreSQL, each from the same
    callers, then the consumer drain with the maker on PostgreSQL; return the figures."""
    reason = unavailable_reason()
    if reason is not None:
        return {"postgresql": None, "skipped": reason}
    count, drains = bench.count, {}
    server = PostgresServer()  # PostgreSQL's default settings: every commit waits for its fsync
    makers: list[Process] = []
    try:
        server.start()
        url = server.create_database("bench")
        (first, first_base), (second, second_base) = start_maker(url), start_maker(url)
        makers += [first, second]
        postgres: dict[str, Callable[[], float]] = {
            "postgres": functools.partial(tree_cpu_seconds, server.pid())
        }
        client = {"client": os.getpid()}
        drains["maker_sqlite"] = timed(
            "maker_sqlite", count, {**client, "makers": bench.servers["maker"]},
            lambda: post_widgets([sqlite_base], count),
        )  # fmt: skip
        drains["maker_pg"] = timed(
            "maker_pg", count, {**client, "makers": first.popen.pid},
            lambda: post_widgets([first_base], count), postgres,
        )  # fmt: skip
        both = {"makers": lambda: cpu_seconds(first.popen.pid) + cpu_seconds(second.popen.pid)}
        drains["makers_pg_2"] = timed(
            "makers_pg_2", count, client,
            lambda: post_widgets([first_base, second_base], count), {**postgres, **both},
        )  # fmt: skip
        bench.drain_consumer(
            "consumer_pg", endpoint, extra={"maker": first.popen.pid}, maker_url=f"{first_base}/add",
            readers=postgres,
        )  # fmt: skip
        drains["consumer_pg"] = bench.drains.pop("consumer_pg")
        outcomes = bench.outcomes.pop("consumer_pg")
    finally:
        for maker in makers:
            maker.stop()
        server.remove()
    return {
        "postgresql": server_version(),
        "skipped": None,
        "drains": {name: drain.as_dict() for name, drain in drains.items()},
        "consumer_pg_outcomes": dict(outcomes),
        "two_makers_over_one": round(drains["makers_pg_2"].rate / drains["maker_pg"].rate, 3),
    }


def stores_report(stores: dict[str, Any], count: int) -> list[str]:
    """Return the lines about the maker on each store, or the one line saying why they were skipped."""
    if stores.get("skipped"):
        return [f"maker on PostgreSQL: n/a: {stores['skipped']}"]
    lines = [
        f"the maker on each store: {count} new widgets POSTed straight to it by {CALLERS} callers (no SQS); "
        f"PostgreSQL {stores['postgresql']}, default settings, on this machine",
        f"{'drain':<20}{'requests':>9}{'seconds':>9}{'req/s':>9}"
        f"   CPU ms/request:{'client':>7}{'makers':>7}{'pg':>6}"
        f"   CPU busy %:{'client':>7}{'makers':>7}{'pg':>6}",
    ]
    for name, d in stores["drains"].items():
        per, busy = d["cpu_ms_per_message"], d["cpu_busy"]
        makers = "maker" if "maker" in per else "makers"
        lines.append(
            f"{name.replace('_', '-'):<20}{d['messages']:>9}{d['seconds']:>9.2f}{d['rate']:>9.2f}"
            f"{'':>18}{per['client']:>7.2f}{per[makers]:>7.2f}{per.get('postgres', 0):>6.2f}"
            f"{'':>14}{busy['client'] * 100:>7.0f}{busy[makers] * 100:>7.0f}"
            f"{busy.get('postgres', 0) * 100:>6.0f}"
        )
    lines += [
        "  maker-sqlite, maker-pg: one maker; makers-pg-2: two makers on one PostgreSQL, half the callers "
        "each; consumer-pg: the consumer drain (as consumer above) with the maker on PostgreSQL "
        "(client: the consumer)",
        f"  consumer-pg outcomes: {stores['consumer_pg_outcomes']}",
        f"two makers / one maker on PostgreSQL  {stores['two_makers_over_one']:>6.2f}   (rate; no target: "
        "both makers, PostgreSQL and the callers share the machine's cores)",
    ]
    return lines


def ratio_text(value: float | None, digits: int) -> str:
    """Return a ratio right-aligned in 8 characters, or n/a when it was not measured."""
    return f"{value:>8.{digits}f}" if value is not None else f"{'n/a':>8}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print its table, and write its JSON if asked."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=500, help="requests preloaded before each drain")
    parser.add_argument(
        "--sample", type=int, default=20, help="messages the one-at-a-time drain handles (2 s each)"
    )
    parser.add_argument(
        "--sqs-latency-ms",
        type=float,
        default=20.0,
        help="latency added to every SQS call in the -latency drains (default 20; 0 skips them)",
    )
    parser.add_argument(
        "--sign-calls",
        type=int,
        default=SIGN_CALLS,
        help=f"calls of Signer.headers timed (default {SIGN_CALLS:,})",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if args.count < 1 or args.sample < 1 or args.sign_calls < 1:
        parser.error("--count, --sample and --sign-calls must be at least 1")
    if args.sqs_latency_ms < 0:
        parser.error("--sqs-latency-ms must be at least 0")
    try:
        sqs_kind = local_sqs_kind()
    except ValueError as error:
        parser.error(str(error))
    figures = run(args.count, min(args.sample, args.count), sqs_kind, args.sqs_latency_ms, args.sign_calls)
    print(report(figures), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
