"""Chaos test: nothing lost, nothing made twice, while the maker and the consumers are knocked over.

The real scripts run against each local SQS server (fauxqs, moto's) with short timings: two
consumers compete for a stream of valid requests mixed with invalid widget ids and garbage
bodies, and while the requests flow the maker is stopped and restarted twice (the second time
for several retry windows: two in the small size, five in the full one), a third consumer is
killed with SIGKILL, and one is stopped with SIGTERM (and restarted). At the end a few
requests the maker is told to refuse with 500 (--fail-widget-id) end FAILED on purpose, and
nothing else may. The truth is what was sent (the message ids the producer printed and boto3
returned); at the end the maker's SQLite file, the response queue, the request queue and the
dead-letter queue are checked against it, and the checks are printed as a table.

`make test` runs the small size; `make chaos` (CHAOS_SIZE=full) runs the full one.

test_sqs_faults is the SQS-faults phase (issue 15), on standard and FIFO queues: two consumers
reach SQS through devtools.fault_proxy (5% each of 500s, throttles, resets before and after the
call took effect, answers held past the read timeout), SQS goes away once (small: 7 s, full:
20 s), a consumer is killed with SIGKILL and restarted; 150 requests (full: 980 valid, 20
invalid). Only it: `make chaos ARGS="-k sqs_faults"`, or `venv/bin/python -m pytest
tests/test_chaos.py -k sqs_faults -s` for the small size.

Faults, all while requests flow: the maker stopped (SIGTERM) and restarted twice, the second
outage two (full size: five) times --max-receives x --retry-delay long, which the breaker
rides out; a consumer K killed with SIGKILL after the maker answered but before its SQS writes
were made (A and B are paused so K takes the next group, the maker is paused with SIGSTOP so K
surely holds requests, then SQS is paused while the maker resumes); consumer B stopped with
SIGTERM while its workers wait on a paused maker, and restarted.

Each protection, removed in a scratch copy of the code, makes these checks fail:
- the maker's idempotency (ON CONFLICT DO NOTHING, 200 for a repeat): repeated widget ids and
  redeliveries get a 500 until they are FAILED: "OK exactly the valid requests", "FAILED
  exactly the doomed requests", "message ids with two different outcomes";
- retrying while the maker is down (say, unreachable -> REJECTED): "OK exactly the valid
  requests", "REJECTED exactly the invalid ids and garbage";
- the circuit breaker (outages counted against the requests): valid requests end FAILED in
  the long outage: "OK exactly the valid requests", "FAILED exactly the doomed requests";
- deleting a request only after its response is sent (deletes flushed first): A's deleted but
  unanswered requests are lost at the SIGKILL: "every request has a terminal outcome";
- keeping a request until it is settled (not deleting it on receive): requests in flight at
  a maker outage or the SIGKILL are lost: "every request has a terminal outcome" and more;
- the clean stop on SIGTERM: "SIGTERM: consumer stopped cleanly";
- the dead-letter copy of FAILED requests: "dead-letter queue holds exactly the FAILED ones".
Handing back unstarted requests with visibility 0 on SIGTERM only saves time (SQS redelivers
them after the visibility timeout anyway), so no outcome check can tell it is missing.

KNOWN BUG, reported: the "deeply nested JSON" garbage body is a poison message (see
garbage_bodies); until the consumer rejects it, "every request has a terminal outcome",
"REJECTED exactly the invalid ids and garbage", "request queue empty, nothing in flight" and
"no handler errors in the consumers' logs" fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.fault_proxy import FAULTS
from devtools.stack import (
    Process,
    free_port,
    run_script,
    start_consumer,
    start_fault_proxy,
    start_maker,
    start_sqs,
)
from tests.helpers import WaitTimeout, wait_until
from widgets.messages import FAILED, OK, REJECTED, new_widget_id, request_body
from widgets.sqs import DEAD_LETTER_QUEUE, REQUEST_QUEUE, RESPONSE_QUEUE, SQSClient, make_client

pytestmark = pytest.mark.e2e

# Short timings. The HTTP timeout outlasts the maker's pauses (SIGSTOP), so a paused maker
# holds requests in flight; the heartbeat keeps them invisible past the 4 s visibility timeout.
MAX_RECEIVES = 3
RETRY_DELAY = 1
CONSUMER_ARGS = [
    "--wait-time", "1", "--visibility-timeout", "4", "--http-timeout", "5",
    "--retry-delay", str(RETRY_DELAY), "--max-receives", str(MAX_RECEIVES),
]  # fmt: skip
# Requests are sent in groups; a fault starts after each group but the first, and the
# next group is sent while that fault lasts.
GROUPS = 5
# How long the first maker outage lasts once a consumer noticed it; the second lasts the size's
# long_outage_windows retry windows (--max-receives x --retry-delay).
SHORT_OUTAGE_SECONDS = 1.5
SEND_PAUSE = 0.05


@dataclass(frozen=True)
class Size:
    """How many requests of each kind one chaos run sends, and how long it may take."""

    name: str
    valid: int
    invalid: int
    garbage: int
    duplicates: int
    doomed: int
    per_run: int
    drain_timeout: float
    time_limit: float
    # The second maker outage, in retry windows. One is enough to tell: without the breaker, every
    # request it touched ended FAILED within it (3 receives, 1 s apart); two leave a margin.
    long_outage_windows: int

    def outage_seconds(self, number: int) -> float:
        """Return how long maker outage number (1 or 2) lasts once a consumer noticed it."""
        return SHORT_OUTAGE_SECONDS if number == 1 else self.long_outage_windows * MAX_RECEIVES * RETRY_DELAY


SIZES = {
    "small": Size(
        "small", 60, 10, 8, 4, 3, per_run=12, drain_timeout=20, time_limit=150, long_outage_windows=2
    ),
    "full": Size(
        "full", 300, 30, 20, 10, 5, per_run=20, drain_timeout=45, time_limit=420, long_outage_windows=5
    ),
}
CHAOS_SIZE = os.environ.get("CHAOS_SIZE", "small")
if CHAOS_SIZE not in SIZES:
    raise ValueError(f"CHAOS_SIZE={CHAOS_SIZE!r}: use one of {', '.join(SIZES)}")
SIZE = SIZES[CHAOS_SIZE]

# What each kind of request must end as.
EXPECTED_STATUS = {"valid": OK, "duplicate": OK, "invalid": REJECTED, "garbage": REJECTED, "doomed": FAILED}


@dataclass(frozen=True)
class Sent:
    """One request that SQS accepted: its message id, what kind it is, and its widget id if any."""

    message_id: str
    kind: str
    label: str
    widget_id: str | None = None


@dataclass(frozen=True)
class Check:
    """One row of the final table."""

    name: str
    expected: str
    actual: str
    ok: bool


@dataclass
class Ledger:
    """Everything sent so far, shared by the sender thread and the test."""

    sent: list[Sent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Sent) -> None:
        """Record one accepted request."""
        with self.lock:
            self.sent.append(item)

    def valid_ids(self) -> list[str]:
        """Return the widget ids of the valid requests sent so far, oldest first."""
        with self.lock:
            return [s.widget_id for s in self.sent if s.kind == "valid" and s.widget_id]


class Clock:
    """Prints the scenario's timeline with seconds since the start."""

    def __init__(self) -> None:
        """Start the clock."""
        self.started = time.monotonic()

    def elapsed(self) -> float:
        """Return the seconds since the start."""
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        """Print one timeline line."""
        print(f"[{self.elapsed():6.1f}s] {text}", flush=True)


def invalid_ids(count: int) -> list[tuple[str, str]]:
    """Return count (label, widget id) pairs that the maker must refuse, of many kinds."""

    def upper() -> str:
        while (widget_id := new_widget_id()) == widget_id.upper():
            pass
        return widget_id.upper()

    kinds: list[tuple[str, Callable[[], str]]] = [
        ("the seed's invalid id", lambda: "this_is_not_a_valid_widget_id"),
        ("empty string", lambda: ""),
        ("version-4 UUID", lambda: str(uuid.uuid4())),
        ("upper-case v1 UUID", upper),
        ("v1 UUID without hyphens", lambda: uuid.uuid1().hex),
        ("v1 UUID in braces", lambda: "{" + new_widget_id() + "}"),
        ("v1 UUID URN", lambda: uuid.uuid1().urn),
        ("v1 UUID plus a space", lambda: new_widget_id() + " "),
        ("300 characters", lambda: "x" * 300),
        ("SQL", lambda: "'; DROP TABLE widgets; --"),
        ("non-hex character", lambda: "g" + new_widget_id()[1:]),
        ("non-ASCII", lambda: "wïdgét-☃-日本-" + new_widget_id()[:8]),
        ("NUL character", lambda: new_widget_id()[:-1] + "\0"),
        ("newline and a forged log line", lambda: new_widget_id() + "\nINFO OK message_id=forged"),
        ("path", lambda: "../../etc/passwd"),
    ]
    return [(kinds[i % len(kinds)][0], kinds[i % len(kinds)][1]()) for i in range(count)]


def garbage_bodies(count: int) -> list[tuple[str, str, str | None]]:
    """Return count (label, body, widget id inside) garbage request bodies, the important kinds first."""
    kinds: list[tuple[str, Callable[[str], str]]] = [
        ("not JSON", lambda w: f"please make widget {w}"),
        ("JSON array", lambda w: json.dumps([w])),
        ("missing WidgetId", lambda w: json.dumps({"widget_id": w})),
        ("numeric WidgetId", lambda w: '{"WidgetId": 12345}'),
        ("10 KB body", lambda w: json.dumps({"WidgetId": w, "padding": "x" * 10240})),
        ("non-ASCII, not JSON", lambda w: "ünïcødé ☃ 日本語 — ¿widget? " + w),
        # KNOWN BUG: a poison message. json.loads raises RecursionError (not ValueError), which
        # parse_request lets through; the consumer logs handler_error and the request comes back
        # after every visibility timeout, never answered, until SQS's redrive moves it to the
        # dead-letter queue silently. It fails "every request has a terminal outcome", "REJECTED
        # exactly ...", "request queue empty" and "no handler errors" until parse_request
        # treats a RecursionError as an InvalidRequest.
        ("deeply nested JSON", lambda w: "[" * 1500 + "]" * 1500),
        ("truncated JSON", lambda w: '{"WidgetId": "' + w[:10]),
        ("JSON string", lambda w: json.dumps(w)),
        ("JSON null", lambda w: "null"),
        ("empty object", lambda w: "{}"),
        ("WidgetId null", lambda w: '{"WidgetId": null}'),
        ("WidgetId list", lambda w: json.dumps({"WidgetId": [w]})),
        ("WidgetId object", lambda w: json.dumps({"WidgetId": {"id": w}})),
        ("WidgetId NaN", lambda w: '{"WidgetId": NaN}'),
        ("XML", lambda w: f"<WidgetRequest><WidgetId>{w}</WidgetId></WidgetRequest>"),
        ("whitespace only", lambda w: " \t "),
        ("JSON true", lambda w: "true"),
        ("lower-case key", lambda w: json.dumps({"widgetid": w})),
        ("JSON Lines", lambda w: request_body(w) + "\n" + request_body(new_widget_id())),
    ]
    bodies = []
    for i in range(count):
        widget_id = new_widget_id()
        label, make = kinds[i % len(kinds)]
        body = make(widget_id)
        bodies.append((label, body, widget_id if widget_id in body else None))
    return bodies


def sqs_client(endpoint: str) -> SQSClient:
    """Return an SQS client for the local SQS."""
    return make_client(None, endpoint, max_connections=4)


def queue_counts(sqs: SQSClient, url: str) -> tuple[int, int]:
    """Return (visible or delayed, in flight) for a queue.

    Delayed counts as waiting: a request the consumer sent afresh (its receive count used up
    by outages) may wait out a retry delay as a delayed message.
    """
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    waiting = int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes.get("ApproximateNumberOfMessagesDelayed", 0)
    )
    return waiting, int(attributes["ApproximateNumberOfMessagesNotVisible"])


def held_within(condition: Callable[[], object], timeout: float, pause: float = 0.25) -> bool:
    """Tell whether condition() came true within timeout: the chaos test reports it as a check."""
    try:
        wait_until(condition, max(timeout, 0.0), pause=pause)
    except WaitTimeout:
        return False
    return True


def wait_drained(sqs: SQSClient, url: str, timeout: float) -> tuple[int, int]:
    """Wait until a queue holds nothing, visible or in flight; return the last counts seen."""
    counts = queue_counts(sqs, url)

    def drained() -> bool:
        nonlocal counts
        counts = queue_counts(sqs, url)
        return counts == (0, 0)

    held_within(drained, timeout, 0.5)
    return counts


def receive_all(sqs: SQSClient, url: str) -> list[dict[str, Any]]:
    """Receive every message of a queue once (hiding each for ten minutes), attributes included."""
    messages: list[dict[str, Any]] = []
    empty = 0
    while empty < 3:
        batch = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=600,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        ).get("Messages", [])
        messages.extend(batch)
        empty = 0 if batch else empty + 1
    return messages


def new_lines(process: Process, start: int, pattern: str) -> list[str]:
    """Return the lines a process printed from line index start on that match pattern."""
    regex = re.compile(pattern)
    return [line for line in process.lines[start:] if regex.search(line)]


def wait_line(processes: Sequence[Process], starts: Sequence[int], pattern: str, timeout: float) -> bool:
    """Wait until one of processes prints a line matching pattern after its start index."""
    return held_within(
        lambda: any(new_lines(p, s, pattern) for p, s in zip(processes, starts, strict=True)), timeout, 0.05
    )


def wait_event(event: threading.Event, sender: Sender | FaultsSender, timeout: float, what: str) -> None:
    """Wait for event, giving up when the sender failed or after timeout."""

    def happened() -> bool:
        if sender.errors:
            raise RuntimeError(f"the sender failed before {what}") from sender.errors[0]
        return event.wait(0.1)

    wait_until(happened, timeout, f"{what} did not happen", pause=0)


class Sender:
    """Sends the requests in groups from a background thread; group g waits until fault g starts."""

    def __init__(self, endpoint: str, sqs: SQSClient, request_url: str, size: Size, clock: Clock) -> None:
        """Plan the groups: producer runs for the valid requests, boto3 sends for the rest."""
        self.endpoint = endpoint
        self.sqs = sqs
        self.request_url = request_url
        self.clock = clock
        self.ledger = Ledger()
        self.fault_started = [threading.Event() for _ in range(GROUPS)]
        self.group_started = [threading.Event() for _ in range(GROUPS)]
        self.done = threading.Event()
        self.abort = threading.Event()
        self.errors: list[BaseException] = []
        self.plan: list[list[tuple[str, Any]]] = [[] for _ in range(GROUPS)]
        extras: list[tuple[str, Any]] = [("invalid", pair) for pair in invalid_ids(size.invalid)]
        extras += [("garbage", triple) for triple in garbage_bodies(size.garbage)]
        extras += [("duplicate", n) for n in range(size.duplicates)]
        # Spread the extras over the groups, interleaved with the producer runs.
        extras = [extras[i] for i in sorted(range(len(extras)), key=lambda i: (i * 7919) % len(extras))]
        runs_per_group = size.valid // GROUPS // size.per_run
        assert runs_per_group * size.per_run * GROUPS == size.valid, "valid must split into whole runs"
        for g in range(GROUPS):
            share = extras[g::GROUPS]
            step = max(1, -(-len(share) // runs_per_group))
            for r in range(runs_per_group):
                self.plan[g].append(("produce", size.per_run))
                self.plan[g].extend(share[r * step : (r + 1) * step])
        # One invalid id goes through the producer script, as a user would send it.
        self.plan[0].insert(
            1, ("produce-id", ("the seed's invalid id, by the producer", "this_is_not_a_valid_widget_id"))
        )
        self.thread = threading.Thread(target=self._run, name="sender", daemon=True)

    def start(self) -> None:
        """Start sending; group 0 goes at once."""
        self.fault_started[0].set()
        self.thread.start()

    def produce(self, args: Sequence[str]) -> list[tuple[str, str]]:
        """Run the producer script; return the (message id, widget id) pairs it printed."""
        result = run_script("widget_producer.py", ["--endpoint-url", self.endpoint, *args], timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"producer {args} failed ({result.returncode}):\n{result.stderr}")
        pairs = []
        for line in result.stdout.splitlines():
            message_id, _, widget_id = line.partition(" ")
            pairs.append((message_id, widget_id))
        return pairs

    def raw(self, body: str) -> str:
        """Send one body with boto3; return its message id."""
        return str(self.sqs.send_message(QueueUrl=self.request_url, MessageBody=body)["MessageId"])

    def send(self, kind: str, detail: Any) -> None:
        """Send one planned item and record what SQS accepted."""
        if kind == "produce":
            pairs = self.produce(["--count", str(detail)])
            if len(pairs) != detail:
                raise RuntimeError(f"the producer sent {len(pairs)} of {detail} requests")
            for message_id, widget_id in pairs:
                self.ledger.add(Sent(message_id, "valid", "valid", widget_id))
        elif kind == "produce-id":
            label, widget_id = detail
            ((message_id, _),) = self.produce([f"--widget-id={widget_id}"])
            self.ledger.add(Sent(message_id, "invalid", label, widget_id))
        elif kind == "invalid":
            label, widget_id = detail
            self.ledger.add(Sent(self.raw(request_body(widget_id)), "invalid", label, widget_id))
        elif kind == "garbage":
            label, body, widget_id = detail
            self.ledger.add(Sent(self.raw(body), "garbage", label, widget_id))
        elif kind == "duplicate":
            # Alternate between the newest valid id (its first request may still be in flight:
            # two consumers POST the same widget at once) and an old one (made long ago).
            ids = self.ledger.valid_ids()
            widget_id = ids[-1] if detail % 2 == 0 else ids[len(ids) // 3]
            self.ledger.add(Sent(self.raw(request_body(widget_id)), "duplicate", "same widget id", widget_id))

    def _run(self) -> None:
        """Send every group, each after its fault started; record any error."""
        try:
            for g, items in enumerate(self.plan):
                while not self.fault_started[g].wait(0.1):
                    if self.abort.is_set():
                        return
                for kind, detail in items:
                    self.send(kind, detail)
                    self.group_started[g].set()
                    time.sleep(SEND_PAUSE)
                self.clock.say(f"sender: group {g} sent ({len(self.ledger.sent)} requests so far)")
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self.done.set()


class Stack:
    """The processes of one run, so they can be replaced and all stopped at the end."""

    def __init__(self) -> None:
        """Start with no processes."""
        self.processes: list[Process] = []

    def add(self, process: Process) -> Process:
        """Keep a process to stop at the end; return it."""
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """Stop every process still running, newest first."""
        for process in reversed(self.processes):
            if process.running():
                process.signal(signal.SIGCONT)  # a paused process would not see the SIGTERM
                process.stop(timeout=10)

    def log_lines(self, pattern: str) -> Iterator[str]:
        """Yield the lines of every process but the SQS matching pattern, with the process name."""
        for process in self.processes:
            if process.name != "sqs":
                for line in new_lines(process, 0, pattern):
                    yield f"{process.name}: {line}"


def fmt(items: Sequence[str], limit: int = 3) -> str:
    """Return up to limit items joined, with how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def print_table(checks: Sequence[Check]) -> None:
    """Print the checks as a table."""
    rows = [("check", "expected", "actual", "pass")]
    rows += [(c.name, c.expected, c.actual, "yes" if c.ok else "NO") for c in checks]
    widths = [min(60, max(len(row[i]) for row in rows)) for i in range(3)]
    print()
    for n, row in enumerate(rows):
        cells = [row[i][: widths[i]].ljust(widths[i]) for i in range(3)]
        print(" | ".join([*cells, row[3]]))
        if n == 0:
            print("-+-".join(["-" * w for w in widths] + ["----"]))
    print(flush=True)


def outcome_checks(
    sent: Sequence[Sent], responses: Sequence[dict[str, Any]], dead: Sequence[dict[str, Any]], db: Path
) -> list[Check]:
    """Compare what was sent with the responses, the dead-letter queue and the maker's database."""
    checks: list[Check] = []
    by_id = {s.message_id: s for s in sent}
    statuses: dict[str, set[str]] = defaultdict(set)
    first: dict[str, dict[str, Any]] = {}
    copies: Counter[str] = Counter()
    unreadable = 0
    for message in responses:
        try:
            response = json.loads(message["Body"])
            message_id = response["MessageId"]
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        statuses[message_id].add(response.get("Status"))
        first.setdefault(message_id, response)
        copies[message_id] += 1

    missing = [f"{by_id[m].kind} {by_id[m].label!r}" for m in by_id if m not in statuses]
    checks.append(
        Check(
            "every request has a terminal outcome",
            f"{len(by_id)} of {len(by_id)}",
            f"{len(by_id) - len(missing)} of {len(by_id)}"
            + (f"; missing: {fmt(missing)}" if missing else ""),
            not missing,
        )
    )
    unknown = [m for m in statuses if m not in by_id]
    not_terminal = [m for m, s in statuses.items() if not s <= {OK, REJECTED, FAILED}]
    odd = len(unknown) + len(not_terminal) + unreadable
    checks.append(Check("responses unreadable, unknown or not terminal", "0", str(odd), not odd))
    conflicting = [f"{m}: {sorted(s)}" for m, s in statuses.items() if len(s) > 1]
    checks.append(
        Check("message ids with two different outcomes", "0", fmt(conflicting) or "0", not conflicting)
    )
    repeated = sum(n - 1 for n in copies.values())
    checks.append(
        Check(
            "duplicate responses (same id, collapsed)",
            "any",
            f"{repeated} extra copies of {sum(1 for n in copies.values() if n > 1)} ids",
            True,
        )
    )

    def status_check(name: str, status: str) -> None:
        expected = {m for m, s in by_id.items() if EXPECTED_STATUS[s.kind] == status}
        actual = {m for m, s in statuses.items() if status in s and m in by_id}
        wrong = [f"{by_id[m].kind} {by_id[m].label!r} -> {sorted(statuses[m])}" for m in actual - expected]
        absent = [
            f"{by_id[m].kind} {by_id[m].label!r} -> {sorted(statuses[m]) or 'none'}"
            for m in expected - actual
        ]
        detail = "; ".join(part for part in (fmt(wrong), fmt(absent)) if part)
        checks.append(
            Check(
                name,
                str(len(expected)),
                f"{len(actual)}" + (f" ({detail})" if detail else ""),
                actual == expected,
            )
        )

    status_check("OK exactly the valid requests (duplicates too)", OK)
    status_check("REJECTED exactly the invalid ids and garbage", REJECTED)
    status_check("FAILED exactly the doomed requests", FAILED)

    wrong_widget = [
        m
        for m, s in by_id.items()
        if s.kind in ("valid", "duplicate")
        and first.get(m, {}).get("Status") == OK
        and (
            first[m].get("WidgetId") != s.widget_id
            or (first[m].get("Widget") or {}).get("widget_id") != s.widget_id
        )
    ]
    checks.append(
        Check(
            "OK responses name the requested widget",
            "0 wrong",
            f"{len(wrong_widget)} wrong",
            not wrong_widget,
        )
    )

    # The maker's database, read directly.
    with closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT widget_id, idempotency_key FROM widgets").fetchall()
    rows_per_widget = Counter(row[0] for row in rows)
    wanted = {s.widget_id for s in sent if s.kind in ("valid", "duplicate") and s.widget_id}
    once = sum(1 for w in wanted if rows_per_widget[w] == 1)
    checks.append(
        Check(
            "every valid widget exists exactly once in the maker",
            str(len(wanted)),
            str(once),
            once == len(wanted),
        )
    )
    extra = [w for w in rows_per_widget if w not in wanted]
    never = [
        f"{s.kind} {s.label!r}" for s in sent if s.widget_id in extra and s.kind not in ("valid", "duplicate")
    ]
    checks.append(
        Check(
            "widgets that no valid request asked for",
            "0",
            f"{len(extra)}" + (f" ({fmt(never)})" if never else ""),
            not extra,
        )
    )
    requesters: dict[str, set[str]] = defaultdict(set)
    for s in sent:
        if s.widget_id:
            requesters[s.widget_id].add(s.message_id)
    foreign = [w for w, key in rows if w in wanted and key not in requesters[w]]
    checks.append(
        Check(
            "each widget's idempotency key is a request for it",
            "0 foreign",
            f"{len(foreign)} foreign",
            not foreign,
        )
    )

    # The dead-letter queue, by the OriginalMessageId the consumer puts on each copy.
    failed = {m for m, s in statuses.items() if FAILED in s}
    originals: Counter[str] = Counter()
    silent: list[str] = []
    incomplete = 0
    for message in dead:
        attributes = message.get("MessageAttributes", {})
        original = attributes.get("OriginalMessageId", {}).get("StringValue")
        if original is None:
            # SQS's own redrive moved it: no response, no reason.
            silent.append(
                f"{message['MessageId']} ({by_id[message['MessageId']].label!r})"
                if message["MessageId"] in by_id
                else message["MessageId"]
            )
            continue
        originals[original] += 1
        request = by_id.get(original)
        try:
            copied = json.loads(message.get("Body", "")).get("WidgetId")
        except (ValueError, AttributeError):
            copied = None
        if (
            "FailureReason" not in attributes
            or "ReceiveCount" not in attributes
            or request is None
            or copied != request.widget_id
        ):
            incomplete += 1
    checks.append(
        Check(
            "dead-letter queue holds exactly the FAILED ones",
            f"{len(failed)} ids",
            f"{len(set(originals))} ids"
            + ("" if set(originals) == failed else f" (differ: {fmt(sorted(set(originals) ^ failed))})"),
            set(originals) == failed,
        )
    )
    checks.append(
        Check(
            "dead letters without OriginalMessageId (SQS redrive)",
            "0",
            str(len(silent)) + (f" ({fmt(silent)})" if silent else ""),
            not silent,
        )
    )
    checks.append(
        Check(
            "dead letters: request body, FailureReason, ReceiveCount",
            str(sum(originals.values())),
            str(sum(originals.values()) - incomplete),
            incomplete == 0,
        )
    )
    return checks


def run_chaos(size: Size, tmp: Path, sqs_kind: str) -> tuple[list[Check], Stack]:
    """Run the whole scenario at the given size; return the checks and the processes' logs."""
    clock = Clock()
    stack = Stack()
    db = tmp / "widgets.db"
    checks: list[Check] = []
    senders: list[Sender] = []
    try:
        sqs_process, endpoint = start_sqs(kind=sqs_kind)
        stack.add(sqs_process)
        maker_port = free_port()
        doomed_ids = [new_widget_id() for _ in range(size.doomed)]
        maker_args = [arg for widget_id in doomed_ids for arg in ("--fail-widget-id", widget_id)]
        maker, base = start_maker(db, port=maker_port, args=maker_args)
        stack.add(maker)
        maker_url = f"{base}/add"
        first = stack.add(start_consumer(endpoint, maker_url, CONSUMER_ARGS, name="consumer-A"))
        second = stack.add(start_consumer(endpoint, maker_url, CONSUMER_ARGS, name="consumer-B"))
        sqs = sqs_client(endpoint)
        request_url = sqs.get_queue_url(QueueName=REQUEST_QUEUE)["QueueUrl"]
        response_url = sqs.get_queue_url(QueueName=RESPONSE_QUEUE)["QueueUrl"]
        dead_url = sqs.get_queue_url(QueueName=DEAD_LETTER_QUEUE)["QueueUrl"]
        clock.say(
            f"started: sqs ({sqs_kind}) {endpoint}, maker {base}, "
            f"consumers A and B ({' '.join(CONSUMER_ARGS)})"
        )

        sender = Sender(endpoint, sqs, request_url, size, clock)
        senders.append(sender)
        sender.start()
        consumers = [first, second]

        def outage(number: int, group: int) -> bool:
            """Stop the maker, let the next group arrive, restart it once a breaker opened."""
            nonlocal maker
            wait_event(sender.group_started[group - 1], sender, 120, f"group {group - 1}")
            starts = [len(c.lines) for c in consumers]
            maker.stop()
            clock.say(f"fault {group}: maker stopped (outage {number})")
            sender.fault_started[group].set()
            noticed = wait_line(consumers, starts, r"breaker_open: maker unreachable", timeout=20)
            time.sleep(size.outage_seconds(number))  # the outage itself: its length is the scenario
            maker, _ = start_maker(db, port=maker_port, args=maker_args)
            stack.add(maker)
            # Every breaker that opened lets requests through again once a probe finds the maker.
            for consumer, start in zip(consumers, starts, strict=True):
                if new_lines(consumer, start, r"breaker_open"):
                    wait_line([consumer], [start], r"breaker_(half_open|closed)", timeout=20)
            clock.say(f"fault {group}: maker restarted (breaker opened during the outage: {noticed})")
            return noticed

        def freeze_maker(group: int) -> int:
            """Pause the maker (SIGSTOP) and let the next group arrive; return the requests in flight."""
            wait_event(sender.group_started[group - 1], sender, 120, f"group {group - 1}")
            maker.signal(signal.SIGSTOP)
            sender.fault_started[group].set()
            wait_event(sender.group_started[group], sender, 60, f"group {group}")
            # The consumers' workers now wait on the paused maker, their look-ahead batches unstarted
            # (a pause that shapes the scenario; the checks hold whatever it catches).
            time.sleep(0.5)
            return queue_counts(sqs, request_url)[1]

        retried_first = outage(1, 1)

        # A consumer is killed between the maker's answers and the SQS writes about them: A and
        # B pause, so a fresh consumer K is the only one to take the next group; the maker pauses
        # so K surely holds requests, then SQS pauses and the maker resumes, so K gets its
        # answers (the widgets are made) but its responses and deletes wait on SQS. Whatever K
        # had written reaches SQS when it resumes; the rest is redelivered after the visibility
        # timeout and must end the same way, without a second widget.
        for consumer in consumers:
            consumer.signal(signal.SIGSTOP)
        victim = stack.add(start_consumer(endpoint, maker_url, CONSUMER_ARGS, name="consumer-K"))
        in_flight = freeze_maker(2)
        sqs_process.signal(signal.SIGSTOP)
        unwritten_from = len(victim.lines)
        maker.signal(signal.SIGCONT)
        time.sleep(0.5)  # K gets its answers meanwhile (the scenario; the checks hold however many)
        victim.kill()
        sqs_process.signal(signal.SIGCONT)
        for consumer in consumers:
            consumer.signal(signal.SIGCONT)
        unwritten = [
            m.group(1)
            for line in victim.lines[unwritten_from:]
            if (m := re.search(r" message_id=(\S+)", line))
        ]
        clock.say(
            f"fault 2: consumer K killed with SIGKILL ({in_flight} requests in flight, "
            f"{len(unwritten)} outcomes not yet written to SQS); A and B resumed"
        )

        retried_second = outage(2, 3)

        # Again with the maker paused, so consumer B holds requests both started and unstarted.
        freeze_maker(4)
        terminated_at = time.monotonic()
        second.signal(signal.SIGTERM)
        time.sleep(0.3)  # B is stopping while the maker is still paused (the scenario)
        maker.signal(signal.SIGCONT)
        try:
            term_code: int | None = second.popen.wait(15)
        except subprocess.TimeoutExpired:
            term_code = None
        term_seconds = time.monotonic() - terminated_at
        clock.say(f"fault 4: consumer B stopped with SIGTERM: exit {term_code} after {term_seconds:.1f}s")
        try:
            second.wait_for(r"widget_consumer INFO stopped$", timeout=5)
            said_stopped = True
        except (RuntimeError, TimeoutError):
            said_stopped = False
        term_clean = term_code == 0 and said_stopped and not new_lines(second, 0, r"SQS writes not made")
        second = stack.add(start_consumer(endpoint, maker_url, CONSUMER_ARGS, name="consumer-B2"))
        consumers[1] = second
        clock.say("fault 4: consumer B2 started")

        wait_event(sender.done, sender, 300, "the end of sending")
        if sender.errors:
            raise RuntimeError("the sender failed") from sender.errors[0]
        # Requests that must end FAILED: the maker refuses them with 500 while it makes the rest.
        for widget_id in doomed_ids:
            ((message_id, _),) = sender.produce([f"--widget-id={widget_id}"])
            sender.ledger.add(Sent(message_id, "doomed", "doomed (maker refuses it)", widget_id))
        clock.say(f"all {len(sender.ledger.sent)} requests sent; waiting for the request queue to drain")
        drained = wait_drained(sqs, request_url, size.drain_timeout)
        clock.say(f"request queue: {drained[0]} visible, {drained[1]} in flight")
        end_codes = {c.name: c.stop() for c in consumers}
        clock.say(f"consumers stopped: {end_codes}")
        maker.stop()
        final_counts = queue_counts(sqs, request_url)
        clock.say(f"everything stopped; request queue {final_counts[0]} visible, {final_counts[1]} in flight")

        responses = receive_all(sqs, response_url)
        dead = receive_all(sqs, dead_url)
        sent = sender.ledger.sent
        kinds = Counter(s.kind for s in sent)
        print(
            f"\nchaos ({size.name}): {len(sent)} requests: {kinds['valid']} valid, {kinds['duplicate']} "
            f"repeating a valid widget id, {kinds['invalid']} invalid ids, {kinds['garbage']} garbage "
            f"bodies, {kinds['doomed']} doomed; {len(responses)} responses, {len(dead)} dead letters; "
            f"{clock.elapsed():.0f}s"
        )
        checks = outcome_checks(sent, responses, dead, db)
        checks.append(
            Check(
                "request queue empty, nothing in flight",
                "0 visible, 0 in flight",
                f"{final_counts[0]} visible, {final_counts[1]} in flight",
                final_counts == (0, 0),
            )
        )
        errors = list(stack.log_lines(r" (handler_error|not_settled) "))
        checks.append(Check("no handler errors in the consumers' logs", "0", str(len(errors)), not errors))
        checks.append(Check("SIGKILL: requests in flight at the kill", "> 0", str(in_flight), in_flight > 0))
        checks.append(
            Check(
                "SIGKILL: outcomes decided, not yet written to SQS",
                "> 0",
                str(len(unwritten)),
                bool(unwritten),
            )
        )
        repeats = sum(len(new_lines(p, 0, r" widget_exists ")) for p in stack.processes if p.name == "maker")
        checks.append(
            Check(
                "repeated POSTs answered with the stored widget",
                f">= {size.duplicates}",
                str(repeats),
                repeats >= size.duplicates,
            )
        )
        checks.append(
            Check(
                "maker outages noticed (breaker opened)",
                "2 of 2",
                f"{int(retried_first) + int(retried_second)} of 2",
                retried_first and retried_second,
            )
        )
        redelivered = sum(
            1
            for m in responses
            if json.loads(m["Body"]).get("Status") == OK and json.loads(m["Body"]).get("ReceiveCount", 1) > 1
        )
        checks.append(
            Check("OK after a redelivery (outage, SIGKILL)", "> 0", str(redelivered), redelivered > 0)
        )
        checks.append(
            Check(
                "SIGTERM: consumer stopped cleanly",
                "exit 0, 'stopped', all writes made",
                f"exit {term_code} after {term_seconds:.1f}s" + ("" if term_clean else ", not clean"),
                term_clean,
            )
        )
        unclean = {name: code for name, code in end_codes.items() if code != 0}
        checks.append(
            Check(
                "consumers stopped cleanly at the end",
                "all exit 0",
                str(unclean or "all exit 0"),
                not unclean,
            )
        )
        return checks, stack
    finally:
        for sender in senders:
            sender.abort.set()
        stack.stop_all()


@pytest.mark.parametrize(
    "size", [pytest.param(SIZE, id=SIZE.name, marks=pytest.mark.timeout(SIZE.time_limit))]
)
def test_chaos(size: Size, sqs_kind: str, tmp_path: Path) -> None:
    """Faults while requests flow: every request ends exactly once, every valid widget exists exactly once."""
    started = time.monotonic()
    checks, stack = run_chaos(size, tmp_path, sqs_kind)
    print_table(checks)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        # Each distinct problem the logs show, once, with how often it happened.
        seen: Counter[str] = Counter()
        for line in stack.log_lines(r"ERROR|WARNING|Error:|Exception"):
            if "waitress.queue" not in line:  # the maker's busy moments: expected here
                seen[re.sub(r"^(\S+: )\d{4}-\d\d-\d\d [\d:,]+ ", r"\1", line)] += 1
        for line, times in list(seen.items())[:30]:
            print(f"{times:4d} x {line}")
    print(f"chaos ({size.name}, {sqs_kind}) took {time.monotonic() - started:.1f}s")
    assert not failed, f"chaos checks failed: {failed}"


# The SQS-faults phase (issue 15): SQS itself misbehaves, as Amazon SQS and its network can.
#
# Two consumers reach SQS through devtools.fault_proxy, which answers 5% of their calls each with
# 500 InternalFailure, with RequestThrottled, resets the connection before forwarding, forwards
# and then resets (the call took effect, the consumer sees a failure), or holds the answer past
# the consumer's read timeout (the call took effect, the consumer times out); SQS goes away once
# for the size's outage_seconds; consumer B is killed with SIGKILL and restarted. The requests go
# straight to SQS, not through the proxy: the truth is what SQS accepted, and a send reset after
# it took effect would leave a request nobody knows the message id of. The responses are read
# straight from SQS too, as they arrive, so each request's answer time is known.

# The timings of the run ("short"), and the project's defaults of --wait-time (20) and
# --visibility-timeout (30), where a held receive waits 25 s and a message it took stays hidden
# 30 s ("default", make chaos only).
FAULTS_TIMINGS = {
    "short": [
        "--wait-time", "1", "--visibility-timeout", "5", "--retry-delay", "1",
        "--max-receives", "3", "--http-timeout", "2",
    ],
    "default": ["--retry-delay", "1", "--max-receives", "3", "--http-timeout", "2"],
}  # fmt: skip
FAULT_RATE = 0.05
FAULT_SEED = 15
# The calls a running consumer makes. Its start-up calls (CreateQueue, GetQueueAttributes, ...)
# are left alone: a held one would only make a consumer start 21 s late, which is not under test.
FAULTED_ACTIONS = [
    "ReceiveMessage",
    "SendMessage",
    "SendMessageBatch",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
]
FIFO_GROUPS = 6
# The targets.
DRAIN_TARGET = 60.0  # every request answered within this many seconds of the outage's end
EXTRA_PER_REQUEST = 0.25  # extra responses per request, at most
HEALTHY_WITHIN = 5.0  # /healthz 200 again within this many seconds of the outage's end
RSS_LIMIT_MB = 100.0  # each consumer's resident memory (the issue measured under 65 MB)


@dataclass(frozen=True)
class FaultsSize:
    """How many requests the SQS-faults phase sends, how long SQS is away, and how long to wait."""

    name: str
    valid: int
    invalid: int
    outage_seconds: float
    send_seconds: float  # the requests are spread over this long, the outage in their middle
    drain_wait: float  # how long after the outage's end to wait for every answer (>= DRAIN_TARGET)
    time_limit: float
    # Extra responses per request, at most: the target at full size. The small run's 150
    # requests share the same SIGKILL (a batch or two answered but not deleted, answered again) and
    # outage, a larger part of them: 0.26 and 0.29 in two of four runs on a busy machine. The bug
    # the check was written for answered each request 3 to 4 times over.
    extra_per_request: float = EXTRA_PER_REQUEST


FAULTS_SIZES = {
    # 7 s, not the 20 s, keeps the small run within a minute when the consumer keeps up;
    # it still outlasts botocore's retries of a call (so the errors reach the consumer's loops and
    # /healthz) and the 5 s visibility timeout (so requests held at its start come back).
    "small": FaultsSize("small", 140, 10, 7, 12, DRAIN_TARGET, 200, extra_per_request=0.5),
    "full": FaultsSize("full", 980, 20, 20, 50, 240, 900),
}
FAULTS_SIZE = FAULTS_SIZES[CHAOS_SIZE]


@dataclass(frozen=True)
class Request:
    """One request SQS accepted: its place in the run, message id, widget id, group and kind."""

    index: int
    message_id: str
    widget_id: str
    valid: bool
    group: str | None


class FaultsSender:
    """Sends the requests straight to SQS, at a steady pace, from a thread; events mark its progress."""

    def __init__(self, sqs: SQSClient, url: str, size: FaultsSize, fifo: bool, clock: Clock) -> None:
        """Plan the requests: the invalid ones spread evenly among the valid ones."""
        total = size.valid + size.invalid
        bad = {round((i + 0.5) * total / size.invalid) for i in range(size.invalid)}
        invalid = iter(widget_id for _, widget_id in invalid_ids(size.invalid))
        self.plan = [(next(invalid), False) if i in bad else (new_widget_id(), True) for i in range(total)]
        self.sqs, self.url, self.fifo, self.clock = sqs, url, fifo, clock
        self.pace = size.send_seconds / total
        self.sent: list[Request] = []
        self.quarter, self.half, self.done, self.abort = (threading.Event() for _ in range(4))
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="faults-sender", daemon=True)

    def _entry(self, index: int, widget_id: str) -> dict[str, Any]:
        """Return the batch entry of request index; on FIFO queues with its group and a unique dedup id."""
        entry: dict[str, Any] = {"Id": str(index), "MessageBody": request_body(widget_id)}
        if self.fifo:
            entry["MessageGroupId"] = f"group-{index % FIFO_GROUPS}"
            entry["MessageDeduplicationId"] = uuid.uuid4().hex
        return entry

    def _run(self) -> None:
        """Send the plan in batches of ten, each when its time comes; record any error."""
        started = time.monotonic()
        try:
            for first in range(0, len(self.plan), 10):
                if self.abort.wait(max(0.0, started + first * self.pace - time.monotonic())):
                    return
                batch = range(first, min(first + 10, len(self.plan)))
                answer = self.sqs.send_message_batch(
                    QueueUrl=self.url, Entries=[self._entry(i, self.plan[i][0]) for i in batch]
                )
                if answer.get("Failed"):
                    raise RuntimeError(f"SQS refused requests: {answer['Failed']}")
                ids = {int(e["Id"]): e["MessageId"] for e in answer["Successful"]}
                for i in batch:
                    group = f"group-{i % FIFO_GROUPS}" if self.fifo else None
                    self.sent.append(Request(i, ids[i], self.plan[i][0], self.plan[i][1], group))
                if len(self.sent) >= len(self.plan) / 4:
                    self.quarter.set()
                if len(self.sent) >= len(self.plan) / 2:
                    self.half.set()
            self.clock.say(f"sender: all {len(self.sent)} requests sent")
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self.done.set()


class Collector:
    """Receives and deletes the responses straight from SQS as they arrive, noting when each came."""

    def __init__(self, sqs: SQSClient, url: str) -> None:
        """Collect from the response queue at url once started."""
        self.sqs, self.url = sqs, url
        self.responses: list[tuple[float, dict[str, Any]]] = []
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="collector", daemon=True)

    def _run(self) -> None:
        """Receive until stopped and three receives in a row found nothing."""
        empty = 0
        try:
            while not (self.stopping.is_set() and empty >= 3):
                batch = self.sqs.receive_message(
                    QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=600
                ).get("Messages", [])
                now = time.monotonic()
                for message in batch:
                    try:
                        self.responses.append((now, json.loads(message["Body"])))
                    except ValueError:
                        self.responses.append((now, {}))
                if batch:
                    self.sqs.delete_message_batch(
                        QueueUrl=self.url,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
                        ],
                    )
                empty = 0 if batch else empty + 1
        except Exception as exc:
            self.errors.append(exc)

    def first_answers(self) -> dict[str, float]:
        """Return when each request's first response came, by its message id."""
        first: dict[str, float] = {}
        for at, response in list(self.responses):
            first.setdefault(str(response.get("MessageId")), at)
        return first

    def stop(self) -> None:
        """Stop once the queue is empty; wait for the thread."""
        self.stopping.set()
        self.thread.join(60)


class Monitor:
    """Samples a consumer's /healthz and every consumer's resident memory, four times a second."""

    def __init__(self, health_url: str) -> None:
        """Watch health_url; consumers are added with watch()."""
        self.health_url = health_url
        self.health: list[tuple[float, int | None]] = []
        self.rss_mb: Counter[str] = Counter()  # the most seen per consumer
        self.processes: list[Process] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def watch(self, process: Process) -> None:
        """Sample this process's memory too."""
        self.processes.append(process)

    def _run(self) -> None:
        """Sample until stopped."""
        while not self.stopping.wait(0.25):
            try:
                status: int | None = requests.get(self.health_url, timeout=1).status_code
            except requests.RequestException:
                status = None
            self.health.append((time.monotonic(), status))
            for process in list(self.processes):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{process.popen.pid}/status").read_text()
                    if match := re.search(r"^VmRSS:\s+(\d+) kB", text, re.M):
                        self.rss_mb[process.name] = max(self.rss_mb[process.name], int(match.group(1)) / 1024)

    def stop(self) -> None:
        """Stop sampling."""
        self.stopping.set()
        self.thread.join(5)


def stop_together(processes: Sequence[Process], timeout: float = 15.0) -> dict[str, int]:
    """Send SIGTERM to every process at once (one signal each: a second one means "exit now"), wait
    for each, SIGKILL any still running after timeout; return the exit codes by name."""
    for process in processes:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
    return {process.name: process.popen.returncode for process in processes}


@dataclass
class FaultsRun:
    """What one SQS-faults run observed, for the checks."""

    sent: list[Request]
    responses: list[tuple[float, dict[str, Any]]]
    dead: list[dict[str, Any]]
    rows: list[tuple[str]]
    outage: tuple[float, float]
    health: list[tuple[float, int | None]]
    rss_mb: Counter[str]
    drained_at: float | None
    final_counts: tuple[int, int]
    proxy_summary: dict[str, Any]
    end_codes: dict[str, int]
    outcomes_logged: int  # outcomes the consumers decided (and logged), repeats included


def run_sqs_faults(
    size: FaultsSize, tmp: Path, sqs_kind: str, fifo: bool, stack: Stack, timings: str = "short"
) -> FaultsRun:
    """Run the SQS-faults scenario; return what it observed. The caller stops the stack."""
    clock = Clock()
    threads: list[Any] = []
    try:
        sqs_process, endpoint = start_sqs(kind=sqs_kind)
        stack.add(sqs_process)
        maker, base = start_maker(tmp / "widgets.db")
        stack.add(maker)
        rates = [arg for fault in FAULTS for arg in (f"--{fault}", str(FAULT_RATE))]
        proxy_args = ["--seed", str(FAULT_SEED), *rates, "--actions", ",".join(FAULTED_ACTIONS)]
        proxy, proxy_url = start_fault_proxy(endpoint, proxy_args)
        stack.add(proxy)
        queue_args = (
            ["--sqs-request-queue", REQUEST_QUEUE + ".fifo", "--sqs-response-queue", RESPONSE_QUEUE + ".fifo"]
            if fifo
            else []
        )
        args = [*FAULTS_TIMINGS[timings], *queue_args]
        metrics_port = free_port()
        maker_url = f"{base}/add"
        first = stack.add(
            start_consumer(
                proxy_url, maker_url, [*args, "--metrics-port", str(metrics_port)], name="consumer-A"
            )
        )
        second = stack.add(start_consumer(proxy_url, maker_url, args, name="consumer-B"))
        direct = sqs_client(endpoint)
        suffix = ".fifo" if fifo else ""
        request_url = direct.get_queue_url(QueueName=REQUEST_QUEUE + suffix)["QueueUrl"]
        response_url = direct.get_queue_url(QueueName=RESPONSE_QUEUE + suffix)["QueueUrl"]
        dead_url = direct.get_queue_url(QueueName=DEAD_LETTER_QUEUE + suffix)["QueueUrl"]
        clock.say(
            f"started: sqs ({sqs_kind}) {endpoint}, fault proxy {proxy_url} ({FAULT_RATE:g} of each fault, "
            f"seed {FAULT_SEED}), maker {base}, consumers A and B ({' '.join(args)})"
        )

        monitor = Monitor(f"http://127.0.0.1:{metrics_port}/healthz")
        collector = Collector(sqs_client(endpoint), response_url)
        sender = FaultsSender(sqs_client(endpoint), request_url, size, fifo, clock)
        threads += [monitor, collector, sender]
        for process in (first, second):
            monitor.watch(process)
        for thread in (monitor, collector, sender):
            thread.thread.start()

        wait_event(sender.quarter, sender, 60, "a quarter of the requests sent")
        wait_line([second], [0], r" message_id=", 20)  # B surely holds or has handled requests
        second.kill()
        second = stack.add(start_consumer(proxy_url, maker_url, args, name="consumer-B2"))
        monitor.watch(second)
        clock.say("consumer B killed with SIGKILL; B2 started")

        wait_event(sender.half, sender, 60, "half of the requests sent")
        seen = len(proxy.lines)
        proxy.signal(signal.SIGUSR1)
        proxy.wait_for(r"^outage on$", start=seen)
        outage_start = time.monotonic()
        clock.say(f"SQS outage: on for {size.outage_seconds:g}s")
        time.sleep(size.outage_seconds)  # the outage itself: its length is the scenario
        proxy.signal(signal.SIGUSR2)
        proxy.wait_for(r"^outage off$", start=seen)
        outage_end = time.monotonic()
        clock.say("SQS outage: off")

        wait_event(sender.done, sender, 120, "the end of sending")
        if sender.errors:
            raise RuntimeError("the sender failed") from sender.errors[0]
        deadline = outage_end + size.drain_wait
        answered = held_within(
            lambda: (
                len(collector.first_answers().keys() & {r.message_id for r in sender.sent})
                == len(sender.sent)
            ),
            deadline - time.monotonic(),
        )
        clock.say(f"every request answered: {answered}; waiting for the request queue to drain")
        drained = held_within(
            lambda: queue_counts(direct, request_url) == (0, 0), max(deadline - time.monotonic(), 10), 0.5
        )
        drained_at = time.monotonic() if drained else None
        final_counts = queue_counts(direct, request_url)
        clock.say(f"request queue: {final_counts[0]} visible, {final_counts[1]} in flight")
        # A drain faster than the health check's return must not cut its measure short.
        held_within(
            lambda: any(at > outage_end and status == 200 for at, status in monitor.health),
            outage_end + HEALTHY_WITHIN + 1 - time.monotonic(),
        )
        monitor.stop()
        end_codes = stop_together([first, second])
        proxy.stop()
        summary = json.loads(proxy.wait_for(r"^summary (.*)$").group(1))
        clock.say(f"consumers stopped: {end_codes}; proxy stopped")
        collector.stop()
        if collector.errors:
            raise RuntimeError("the collector failed") from collector.errors[0]
        dead = receive_all(direct, dead_url)
        with closing(sqlite3.connect(tmp / "widgets.db")) as connection:
            rows = connection.execute("SELECT widget_id FROM widgets").fetchall()
        return FaultsRun(
            sender.sent,
            collector.responses,
            dead,
            rows,
            (outage_start, outage_end),
            monitor.health,
            monitor.rss_mb,
            drained_at,
            final_counts,
            summary,
            end_codes,
            sum(len(new_lines(p, 0, r" (OK|REJECTED|FAILED) message_id=")) for p in stack.processes),
        )
    finally:
        for thread in threads:
            for name in ("abort", "stopping"):
                if isinstance(getattr(thread, name, None), threading.Event):
                    getattr(thread, name).set()


def faults_checks(run: FaultsRun, fifo: bool, extra_per_request: float = EXTRA_PER_REQUEST) -> list[Check]:
    """Compare what the SQS-faults run sent with its responses, the dead-letter queue and the maker."""
    checks: list[Check] = []
    by_id = {r.message_id: r for r in run.sent}
    statuses: dict[str, set[str]] = defaultdict(set)
    first: dict[str, float] = {}
    copies: Counter[str] = Counter()
    order: dict[str, list[int]] = defaultdict(list)  # per group, the requests in answer order
    for at, response in run.responses:
        message_id = str(response.get("MessageId"))
        statuses[message_id].add(str(response.get("Status")))
        copies[message_id] += 1
        if message_id not in first:
            first[message_id] = at
            if message_id in by_id and by_id[message_id].group is not None:
                order[str(by_id[message_id].group)].append(by_id[message_id].index)
    valid = [r for r in run.sent if r.valid]
    invalid = [r for r in run.sent if not r.valid]

    lost = [r for r in valid if OK not in statuses[r.message_id]]
    checks.append(Check("lost: valid requests without an OK response", "0", str(len(lost)), not lost))
    failed = [r for r in valid if FAILED in statuses[r.message_id]]
    checks.append(Check("valid requests FAILED", "0", str(len(failed)), not failed))
    rejected = [r for r in invalid if statuses[r.message_id] == {REJECTED}]
    checks.append(
        Check(
            "invalid requests REJECTED (only)",
            str(len(invalid)),
            str(len(rejected)),
            len(rejected) == len(invalid),
        )
    )
    rows = Counter(row[0] for row in run.rows)
    twice = [r for r in valid if rows[r.widget_id] > 1]
    unasked = set(rows) - {r.widget_id for r in valid}
    checks.append(
        Check(
            "duplicate widgets (maker rows > 1), widgets not asked for",
            "0, 0",
            f"{len(twice)}, {len(unasked)}",
            not twice and not unasked,
        )
    )

    # A dead letter names its request by OriginalMessageId (the consumer's FAILED copy, or a copy it
    # sent afresh that SQS's redrive then moved) or is the request itself, moved by SQS's redrive.
    # Only the consumer's own FAILED copies carry a FailureReason.
    dead_ids = [
        m.get("MessageAttributes", {}).get("OriginalMessageId", {}).get("StringValue") or m["MessageId"]
        for m in run.dead
    ]
    answered_dead = {m for m in dead_ids if statuses[m] & {OK, REJECTED}}
    silent = sum(1 for m in run.dead if "FailureReason" not in m.get("MessageAttributes", {}))
    checks.append(
        Check(
            "answered requests in the dead-letter queue",
            "0",
            f"{len(answered_dead)} (dead letters: {len(run.dead)}, {silent} without FailureReason)",
            not answered_dead,
        )
    )
    extra = sum(copies.values()) - len(copies)
    per_request = extra / len(run.sent)
    most = max(copies.values(), default=0)
    checks.append(
        Check(
            "extra responses per request",
            f"<= {extra_per_request:g}",
            f"{per_request:.2f} ({extra} extra, up to {most} for one request)",
            per_request <= extra_per_request,
        )
    )
    checks.append(
        Check(
            "outcomes the consumers decided, per request (report)",
            "-",
            f"{run.outcomes_logged / len(run.sent):.2f} ({run.outcomes_logged} for {len(run.sent)})",
            True,
        )
    )
    outage_start, outage_end = run.outage
    unanswered = [r for r in run.sent if r.message_id not in first]
    drain = (
        max((first[r.message_id] for r in run.sent if r.message_id in first), default=outage_end) - outage_end
    )
    # On FIFO queues the time is the queue's, not the consumer's: a receive whose answer is lost
    # (reset after, or held past the read timeout: a tenth of them here) leaves its message in
    # flight for the visibility timeout, and its whole group waits that long behind it (on Amazon
    # SQS as on fauxqs). With six groups and 5 s each time, draining takes minutes; so there the
    # figure is reported, and only "every request answered" is checked.
    bound = DRAIN_TARGET if not fifo else float("inf")
    checks.append(
        Check(
            "every request answered, seconds after the outage's end" + (" (report)" if fifo else ""),
            f"<= {DRAIN_TARGET:g}s" if not fifo else "-",
            f"{drain:.1f}s" + (f", {len(unanswered)} never answered" if unanswered else ""),
            not unanswered and drain <= bound,
        )
    )
    drained = (
        "not drained" if run.drained_at is None else f"{run.drained_at - outage_end:.1f}s after the outage"
    )
    checks.append(
        Check(
            "request queue drained (visible, in flight)",
            "0, 0",
            f"{run.final_counts[0]}, {run.final_counts[1]} ({drained})",
            run.final_counts == (0, 0),
        )
    )
    most_rss = max(run.rss_mb.values(), default=0.0)
    checks.append(
        Check(
            "consumers' max RSS",
            f"<= {RSS_LIMIT_MB:g} MB",
            ", ".join(f"{name} {mb:.0f} MB" for name, mb in sorted(run.rss_mb.items())),
            0 < most_rss <= RSS_LIMIT_MB,
        )
    )
    unhealthy = [at for at, status in run.health if outage_start <= at <= outage_end and status == 503]
    checks.append(
        Check(
            "/healthz 503 during the outage",
            "yes",
            f"after {unhealthy[0] - outage_start:.1f}s" if unhealthy else "never",
            bool(unhealthy),
        )
    )
    healthy = [at for at, status in run.health if at > outage_end and status == 200]
    since = healthy[0] - outage_end if healthy else None
    checks.append(
        Check(
            "/healthz 200 after the outage",
            f"<= {HEALTHY_WITHIN:g}s",
            "never" if since is None else f"after {since:.1f}s",
            since is not None and since <= HEALTHY_WITHIN,
        )
    )
    flaps = sum(1 for at, status in run.health if status != 200 and not outage_start <= at <= outage_end + 1)
    checks.append(Check("/healthz samples not 200 outside the outage (report)", "-", str(flaps), True))
    if fifo:
        disordered = {g: seq for g, seq in order.items() if seq != sorted(seq)}
        example = None
        for group, seq in disordered.items():  # the first one, around its first step back
            back = next(k for k in range(1, len(seq)) if seq[k] < seq[k - 1])
            example = (group, seq[max(0, back - 3) : back + 3])
            break
        checks.append(
            Check(
                "FIFO: each group's responses in the order sent",
                f"{len(order)} of {len(order)} groups",
                f"{len(order) - len(disordered)} of {len(order)}"
                + (f"; {example[0]}: ...{', '.join(map(str, example[1]))}..." if example else ""),
                not disordered,
            )
        )
    faults: Counter[str] = Counter()
    for by_fault in run.proxy_summary["faults"].values():
        faults.update(by_fault)
    calls = sum(run.proxy_summary["calls"].values())
    checks.append(
        Check("calls through the proxy, faulted (report)", "-", f"{calls}, {sum(faults.values())}", True)
    )
    checks.append(Check("consumers' exit codes at the end (report)", "-", str(run.end_codes), True))
    return checks


@pytest.mark.parametrize(
    "size",
    [pytest.param(FAULTS_SIZE, id=FAULTS_SIZE.name, marks=pytest.mark.timeout(FAULTS_SIZE.time_limit))],
)
@pytest.mark.parametrize("queues", ["standard", "fifo"])
@pytest.mark.parametrize("timings", ["short", "default"] if CHAOS_SIZE == "full" else ["short"])
def test_sqs_faults(size: FaultsSize, queues: str, timings: str, sqs_kind: str, tmp_path: Path) -> None:
    """SQS answers 500s and throttles, resets, holds calls and goes away: nothing lost, made twice,
    answered and dead-lettered, and every request answered soon after SQS comes back."""
    if queues == "fifo" and sqs_kind == "moto":
        pytest.skip(
            "moto's server (5.2.5) breaks FIFO order itself: two receives polling at once split one "
            "group between them, and a dead consumer's messages of a group come back last one first"
        )
    started = time.monotonic()
    stack = Stack()
    try:
        run = run_sqs_faults(size, tmp_path, sqs_kind, queues == "fifo", stack, timings)
    finally:
        stack.stop_all()
    # For a closer look: pytest keeps the last runs' tmp_path.
    for process in stack.processes:
        (tmp_path / f"{process.name}.log").write_text(process.output() + "\n")
    with (tmp_path / "sent.jsonl").open("w") as out:
        out.writelines(json.dumps(vars(r)) + "\n" for r in run.sent)
    with (tmp_path / "dead.jsonl").open("w") as out:
        out.writelines(json.dumps(message) + "\n" for message in run.dead)
    with (tmp_path / "responses.jsonl").open("w") as out:
        out.writelines(json.dumps({"at": at, **response}) + "\n" for at, response in run.responses)
    checks = faults_checks(run, queues == "fifo", size.extra_per_request)
    print(
        f"\nSQS faults ({size.name}, {queues}, {timings} timings, {sqs_kind}): {len(run.sent)} requests, "
        f"{len(run.responses)} responses, {len(run.dead)} dead letters; logs in {tmp_path}"
    )
    print(f"fault proxy: {json.dumps(run.proxy_summary)}")
    print_table(checks)
    failed = [c.name for c in checks if not c.ok]
    if failed:
        seen: Counter[str] = Counter()
        for line in stack.log_lines(r"WARNING|ERROR|Error:|Exception"):
            seen[
                re.sub(
                    r"^(\S+: )\d{4}-\d\d-\d\d [\d:,]+ ",
                    r"\1",
                    re.sub(r"message_id=\S+", "message_id=…", line),
                )
            ] += 1
        for line, times in seen.most_common(25):
            print(f"{times:5d} x {line}")
    took = time.monotonic() - started
    print(f"SQS faults ({size.name}, {queues}, {timings} timings, {sqs_kind}) took {took:.1f}s")
    assert not failed, f"SQS-faults checks failed: {failed}"
