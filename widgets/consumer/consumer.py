"""The consumer: its mechanisms wired together, its SQS clients, and the loop widget_consumer.py runs.

Each request ends one of three ways, reported on the response queue: OK (the maker made the
widget), REJECTED (the request can never succeed) or FAILED (the maker kept failing on it while
it made others; a copy is kept in the dead-letter queue). Each mechanism is a module of this
package, and handling.py is the path of one message, top to bottom:

    Receiver (receiver.py)      long-polls while there is room, the breaker is closed and settling keeps up
      -> Heartbeat (heartbeat.py) keeps every held request invisible until SQS confirms it settled
      -> Dispatcher (dispatcher.py) runs each request on a worker thread
      -> Handler (handling.py)    parse, rate slot, breaker, maker call, decide, settle
      -> Outbox (outbox.py)       batched responses, deletes and visibility changes, each call on its own
    Breaker (breaker.py) tells the maker's outages from a failing request.

A request queue named *.fifo is a FIFO queue: the dispatcher then keeps each message group in
order (one request of a group at a time, the next only after the one before it is settled),
and the outbox sends a group's responses one at a time, in that order.

With --metrics-port, an Endpoint (endpoint.py) serves the consumer's Prometheus metrics
(metrics.py, an Observer of observer.py) and its health (health.py); without it, the Observer
that ignores everything is used.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from types import FrameType

import boto3

from widgets.consumer.breaker import Breaker
from widgets.consumer.dispatcher import Dispatcher
from widgets.consumer.endpoint import Endpoint
from widgets.consumer.handling import Adapter, Handler
from widgets.consumer.health import Health, ReceiverState, WriterState, check
from widgets.consumer.heartbeat import Heartbeat
from widgets.consumer.maker_client import MakerClient
from widgets.consumer.metrics import ConsumerMetrics
from widgets.consumer.observer import Observer, Snapshot
from widgets.consumer.outbox import CALLS_IN_FLIGHT, LANES, Outbox
from widgets.consumer.rate_limit import RateLimiter
from widgets.consumer.receiver import Receiver
from widgets.consumer.settings import Settings
from widgets.consumer.signing import Signer
from widgets.consumer.widget_adapter import WidgetAdapter, maker_health_url
from widgets.errors import SetupError, UsageError
from widgets.messages import FAILED, OK, REJECTED, RETRY
from widgets.sqs import (
    CONSUMER_ATTEMPTS,
    QueueUrls,
    SQSClient,
    check_dead_letter_queue,
    dead_letter_queue_name,
    ensure_queues,
    find_queues,
    is_fifo,
    make_client,
    watch_calls,
)

log = logging.getLogger("widget_consumer")

# Receives in flight at once: on Amazon SQS each costs a network round trip, and with one at a
# time the workers wait for it. With 20 ms per call, one kept 0.57 of the rate, three 0.69-0.77,
# five 0.80-0.83 (make bench). Each has room for a batch beyond the busy workers, which the
# heartbeat keeps hidden while they wait (50 with the defaults: 50 ms of work at 1000 a second).
RECEIVES_IN_FLIGHT = 5
# A receive's read timeout beyond its long poll: SQS answers a long poll when it ends, so a call
# still unanswered 5 s later is lost on the way (a connection dropped without a reset).
RECEIVE_TIMEOUT_MARGIN = 5
# A write made again after a timeout waits this many times longer (see connect).
PATIENCE = 4
# How often the consumer logs a summary while it is busy.
SUMMARY_INTERVAL = 30.0


class Consumer:
    """The consumer's mechanisms wired together: start() runs them, stop() and join() end them."""

    def __init__(
        self,
        sqs: SQSClient,
        urls: QueueUrls,
        settings: Settings,
        observer: Observer | None = None,
        writes: SQSClient | None = None,
        target: Target | None = None,
        patient: SQSClient | None = None,
    ) -> None:
        """Build every mechanism from the settings; each reports to observer (by default, to nobody).

        Receives go through sqs, writes through writes (a client with short timeouts; default: sqs).
        The target is where the calls go and what builds them (default: the widget maker).
        """
        target = target or widget_target(settings)
        self.sqs = sqs
        self.settings = settings
        self.observer = observer or Observer()
        self.stopping = threading.Event()
        self.outbox = Outbox(
            writes or sqs,
            urls,
            settings.flush_interval,
            write_timeout=write_timeout(settings.visibility_timeout),
            patient=patient,
        )
        self.maker = MakerClient(
            url=target.url,
            timeout=settings.http_timeout,
            method=target.method,
            health_url=target.health_url,
            signer=Signer(list(settings.signing_keys)) if settings.signing_keys else None,
            name=target.name,
            observer=self.observer,
        )
        self.breaker = Breaker(max_wait=float(min(max(settings.retry_delay, 1), 30)))
        self.heartbeat = Heartbeat(
            extend=self.outbox.change_visibility, visibility_timeout=settings.visibility_timeout
        )
        self.limiter = RateLimiter(rate=settings.max_rate)
        self.handler = Handler(
            outbox=self.outbox,
            maker=self.maker,
            adapter=target.adapter,
            breaker=self.breaker,
            heartbeat=self.heartbeat,
            limiter=self.limiter,
            policy=replace(settings.policy, fifo=is_fifo(urls.request)),
            stopping=self.stopping,
        )
        self.dispatcher = Dispatcher(
            workers=settings.workers,
            # Room for one batch per receive in flight beyond the busy workers.
            lookahead=RECEIVES_IN_FLIGHT * min(settings.batch_size, settings.workers),
            handle=self.handler,
            release=self.handler.hand_back,
            stopping=self.stopping,
        )
        self.receiver = Receiver(
            sqs=sqs,
            url=urls.request,
            dispatcher=self.dispatcher,
            breaker=self.breaker,
            probe=self.maker.healthy,
            heartbeat=self.heartbeat,
            batch_size=settings.batch_size,
            wait_time=settings.wait_time,
            visibility_timeout=settings.visibility_timeout,
            stopping=self.stopping,
            threads=RECEIVES_IN_FLIGHT,
            observer=self.observer,
            behind=self.outbox.behind,
        )
        if self.observer.active:
            clients = (sqs, self.outbox.sqs, self.outbox.patient)
            for client in {id(client): client for client in clients}.values():
                watch_calls(client, self.observer.sqs_error, self.observer.sqs_refused)
        self.observer.watch(self.snapshot)
        self.handle = self.handler.handle
        self.counts = self.handler.counts

    def start(self) -> None:
        """Start the outbox, the heartbeat, the workers and the receiver, in that order."""
        self.outbox.start()
        self.heartbeat.start()
        self.dispatcher.start()
        self.receiver.start()

    def stop(self) -> None:
        """Ask the consumer to stop: no more receives; held messages are finished or handed back."""
        self.stopping.set()
        self.dispatcher.wake()

    def join(self, grace: float = 2.0) -> int:
        """Wait for a stop to complete, in order; return how many SQS writes were not made (normally 0)."""
        # A long poll in progress cannot be cut short; what it brings back is handed back
        # within the grace, else SQS redelivers it after the visibility timeout.
        self.receiver.join(grace)
        # Workers finish their maker calls while the heartbeat still covers them.
        self.dispatcher.join()
        self.heartbeat.stop()
        return self.outbox.close(timeout=grace + 3)

    def counted(self) -> Counter[str]:
        """Return a copy of the outcome counts so far."""
        return self.handler.counted()

    def snapshot(self) -> Snapshot:
        """Return the counts and levels the mechanisms keep, as they are now (for a metrics scrape)."""
        since_receive = time.monotonic() - self.receiver.last_receive
        return Snapshot(
            outcomes=self.counted(),
            held=self.heartbeat.held(),
            maker_calls_in_flight=self.maker.in_flight,
            outbox_backlog=self.outbox.pending(),
            outbox_oldest_seconds=self.outbox.oldest(),
            breaker_state=self.breaker.state,
            breaker_opened=self.breaker.opened,
            breaker_open_seconds=self.breaker.down_seconds(),
            heartbeat_extensions=self.heartbeat.extensions,
            rate_limit_waits=self.limiter.waits,
            rate_limit_wait_seconds=self.limiter.waited,
            last_receive=time.time() - since_receive if self.receiver.receives else None,
        )

    def health(self) -> Health:
        """Judge whether the consumer receives normally (for GET /healthz)."""
        receiver = ReceiverState(
            alive=self.receiver.alive(),
            stopping=self.stopping.is_set(),
            failing=self.receiver.failing(),
            held_back=self.receiver.held_back(),
            last_attempt=self.receiver.last_attempt,
            last_receive=self.receiver.last_receive,
        )
        writer = WriterState(
            failing=self.outbox.failing(),
            failing_for=self.outbox.failing_for(),
            backlog=self.outbox.pending(),
            oldest=self.outbox.oldest(),
        )
        return check(
            receiver,
            self.breaker.state,
            self.breaker.outage(),
            time.monotonic(),
            self.settings.wait_time,
            writer,
            self.settings.visibility_timeout,
        )

    def summary(self, elapsed: float) -> str:
        """Return a one-line summary of the outcomes so far."""
        counted = self.counted()
        done = sum(counted[s] for s in (OK, REJECTED, FAILED))
        counts = " ".join(f"{status}={counted[status]}" for status in (OK, REJECTED, FAILED, RETRY))
        rate = done / elapsed if elapsed > 0 else 0.0
        return f"summary {counts} rate={rate:.1f}/s over {elapsed:.0f}s"


def write_timeout(visibility_timeout: int) -> float:
    """Return the connect and read timeout of the consumer's writes: a fifth of the visibility timeout, 1-5 s.

    A heartbeat's extension is queued with half the visibility timeout or more left (widgets/
    heartbeat.py), so it can time out twice and still be made in time. SQS answers a write in
    tens of milliseconds; a write unanswered for seconds is lost on the way, and waiting longer
    only holds its requests.
    """
    return min(max(visibility_timeout / 5, 1.0), 5.0)


def open_endpoint(settings: Settings) -> Endpoint | None:
    """Bind the metrics port if one was asked for, before anything starts; one clear line if it cannot."""
    if settings.metrics_port is None:
        return None
    try:
        return Endpoint(host=settings.metrics_host, port=settings.metrics_port)
    except OSError as error:
        raise SetupError(
            f"--metrics-port: cannot listen on {settings.metrics_host}:{settings.metrics_port}: "
            f"{error.strerror or error}"
        ) from None


def warn_if_maker_is_down(maker: MakerClient) -> None:
    """Say at start when the maker does not answer, rather than leave it to the breaker's log."""
    if not maker.healthy():
        log.warning(
            "%s_unreachable at %s: requests wait in the queue until it answers", maker.name, maker.url
        )


def install_signal_handlers() -> list[int]:
    """Note the first SIGINT or SIGTERM in the list returned; exit at once on the second.

    The handler takes no lock and logs nothing: it runs between any two bytecodes of the main
    thread, which may hold the very lock it would wait for.
    """
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if received:
            os.write(2, b"second signal: exiting now\n")
            os._exit(128 + signum)
        received.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return received


@dataclass(frozen=True)
class Target:
    """Where a consumer's calls go, how, what the breaker probes, and the adapter that builds them."""

    url: str
    adapter: Adapter
    method: str = "POST"
    health_url: str | None = None  # None: the breaker probes with a TCP connect
    name: str = "target"  # in reasons and logs: "maker unreachable"


def widget_target(settings: Settings) -> Target:
    """Return the widget maker as a target: POST to --maker-url, probes of its /healthz."""
    url = settings.maker_url
    return Target(url, WidgetAdapter(settings.token), "POST", maker_health_url(url), "maker")


@dataclass(frozen=True)
class Queues:
    """The names of the consumer's three queues, and whether to create them."""

    request: str
    response: str | None  # None: no outcome reports
    dead_letter: str | None = None  # default: dead_letter_queue_name(request)
    create: bool = True

    def names(self) -> tuple[str, str | None, str]:
        """Return the request, response and dead-letter queue names (refusing a dead-letter queue of the
        wrong kind)."""
        dead_letter = self.dead_letter or dead_letter_queue_name(self.request)
        try:
            check_dead_letter_queue(self.request, dead_letter)
        except ValueError as error:
            raise UsageError(str(error)) from None
        return self.request, self.response, dead_letter


@dataclass(frozen=True)
class Clients:
    """The consumer's SQS clients: receives, writes, and writes made again after a timeout."""

    receives: SQSClient
    writes: SQSClient
    patient: SQSClient


def connect(
    region: str | None, endpoint_url: str | None, settings: Settings, queues: Queues
) -> tuple[Clients, QueueUrls]:
    """Return the consumer's clients and its queues (created if asked).

    Receives and writes on clients of their own: a long poll's read timeout is its wait, a
    write's is short (write_timeout), and neither kind waits for a connection the other holds. A
    write that timed out is made again with PATIENCE times the timeout (at least 5 s): it may
    have been slow, not lost.
    """
    names = queues.names()
    session = boto3.Session(region_name=region)
    setup = make_client(region, endpoint_url, session=session)
    if queues.create:
        urls = ensure_queues(setup, *names, max_receives=settings.max_receives)
    else:
        urls = find_queues(setup, *names)
    receives = make_client(
        region,
        endpoint_url,
        max_connections=RECEIVES_IN_FLIGHT + 1,
        read_timeout=settings.wait_time + RECEIVE_TIMEOUT_MARGIN,
        attempts=CONSUMER_ATTEMPTS,
        session=session,
    )
    timeout = write_timeout(settings.visibility_timeout)
    writes, patient = (
        make_client(
            region,
            endpoint_url,
            max_connections=CALLS_IN_FLIGHT * LANES,
            read_timeout=read_timeout,
            connect_timeout=timeout,
            attempts=CONSUMER_ATTEMPTS,
            session=session,
        )
        for read_timeout in (timeout, max(PATIENCE * timeout, 5.0))
    )
    return Clients(receives, writes, patient), urls


def run(
    region: str | None,
    endpoint_url: str | None,
    settings: Settings,
    queues: Queues,
    target: Target | None = None,
) -> None:
    """Consume until SIGINT or SIGTERM, then stop cleanly (what widget_consumer.py and sqs_relay.py run)."""
    queues.names()  # a dead-letter queue of the wrong kind is refused before anything starts
    endpoint = open_endpoint(settings)
    metrics = ConsumerMetrics() if endpoint is not None else None
    clients, urls = connect(region, endpoint_url, settings, queues)
    sqs = clients.receives
    target = target or widget_target(settings)
    consumer = Consumer(
        sqs, urls, settings, observer=metrics, writes=clients.writes, target=target, patient=clients.patient
    )
    warn_if_maker_is_down(consumer.maker)
    signals = install_signal_handlers()
    log.info(
        "consuming %s%s at %s -> %s (workers=%d max_receives=%d retry_delay=%ds backoff=%s max_rate=%s)",
        queues.request,
        " (FIFO: each group in order)" if is_fifo(queues.request) else "",
        sqs.meta.endpoint_url,
        target.url,
        settings.workers,
        settings.max_receives,
        settings.retry_delay,
        settings.backoff,
        settings.max_rate or "none",
    )
    started = last_summary = time.monotonic()
    last_counts = consumer.counted()
    consumer.start()
    if endpoint is not None and metrics is not None:
        endpoint.start(metrics=metrics.render, health=consumer.health)
        log.info("metrics at %s/metrics, health at %s/healthz", endpoint.url, endpoint.url)
    while not signals:
        time.sleep(0.1)
        now = time.monotonic()
        if now - last_summary >= SUMMARY_INTERVAL and consumer.counted() != last_counts:
            log.info(consumer.summary(now - started))
            last_summary, last_counts = now, consumer.counted()
    log.info("stopping (signal %d): finishing held messages; signal again to exit now", signals[0])
    consumer.stop()
    unsent = consumer.join(grace=min(settings.wait_time, 2) + 0.5)
    if endpoint is not None:
        endpoint.stop()
    log.info(consumer.summary(time.monotonic() - started))
    if unsent:
        log.warning("stopped with %d SQS writes not made; SQS will redeliver those requests", unsent)
    log.info("stopped")
