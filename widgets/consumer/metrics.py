"""The consumer's Prometheus metrics; the only consumer-side module that imports prometheus_client.

Per maker call and per receive it does a counter increment and a histogram observation on
children bound in advance; everything else is read from the consumer's Snapshot at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, StateSetMetricFamily
from prometheus_client.exposition import choose_encoder

from widgets.consumer.observer import Observer, Snapshot

# The outcome statuses, exposed from 0 on so that rate() sees the first of each.
STATUSES = ("OK", "REJECTED", "FAILED", "RETRY")
BREAKER_STATES = ("closed", "open", "half-open")
# Why a maker call got no HTTP answer at all.
NO_ANSWER_REASONS = ("timeout", "unreachable", "error")
# A maker call is an HTTP round trip of a few milliseconds; --http-timeout may reach an hour.
MAKER_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# SQS returns at most ten messages per receive; 0 is an empty (long) poll.
BATCH_SIZE_BUCKETS = tuple(range(11))


class ConsumerMetrics(Observer):
    """The consumer's metrics in a registry of their own, so that every consumer (and test) counts alone."""

    active = True

    def __init__(self) -> None:
        """Create the metrics; the consumer's counts and levels appear once watch() is called."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.maker_latency = Histogram(
            "widget_consumer_maker_request_duration_seconds",
            "Time from a maker call's start to its answer (or to giving up on it).",
            buckets=MAKER_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.maker_answers = Counter(
            "widget_consumer_maker_answers",
            "Maker calls answered, by HTTP status code.",
            ["code"],
            registry=self.registry,
        )
        self.maker_unanswered = Counter(
            "widget_consumer_maker_unanswered",
            "Maker calls that got no HTTP answer: timeout, unreachable (no connection) or error.",
            ["reason"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "widget_consumer_receive_batch_size",
            "Messages per receive that SQS answered (_count: receives; _sum: messages received).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.sqs_error_counts = Counter(
            "widget_consumer_sqs_errors",
            "SQS calls that failed (one attempt each; the consumer retries them), by operation and error.",
            ["operation", "error"],
            registry=self.registry,
        )
        self.refused_counts = Counter(
            "widget_consumer_sqs_entries_refused",
            "Entries of batch calls that SQS refused one by one, by operation and error code.",
            ["operation", "error"],
            registry=self.registry,
        )
        # HTTP status -> bound child: labels() costs more than the increment itself.
        self._answers: dict[int, Counter] = {}
        self._unanswered = {reason: self.maker_unanswered.labels(reason) for reason in NO_ANSWER_REASONS}

    def maker_call(self, code: int | None, no_answer: str | None, seconds: float) -> None:
        """Count one maker call by its answer, and observe its latency."""
        self.maker_latency.observe(seconds)
        if code is not None:
            child = self._answers.get(code)
            if child is None:
                # HTTP status codes are three digits: a bounded label however the maker answers.
                child = self._answers.setdefault(code, self.maker_answers.labels(str(code)))
            child.inc()
        else:
            self._unanswered.get(no_answer or "error", self._unanswered["error"]).inc()

    def received(self, count: int) -> None:
        """Observe one receive's batch size."""
        self.batch_size.observe(count)

    def sqs_error(self, operation: str, error: str) -> None:
        """Count a failed SQS call."""
        self.sqs_error_counts.labels(operation, error).inc()

    def sqs_refused(self, operation: str, error: str, count: int) -> None:
        """Count batch entries SQS refused."""
        self.refused_counts.labels(operation, error).inc(count)

    def watch(self, snapshot: Callable[[], Snapshot]) -> None:
        """Expose the consumer's counts and levels, read through snapshot() at each scrape."""
        self.registry.register(SnapshotCollector(snapshot))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Return the metrics in the format the Accept header asks for, and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class SnapshotCollector:
    """Turns one Snapshot per scrape into metric families: no cost between scrapes."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        """Read the consumer through snapshot()."""
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """Yield the consumer's counts and levels as they are now."""
        now = self.snapshot()
        outcomes = CounterMetricFamily(
            "widget_consumer_outcomes",
            "Deliveries settled, by outcome (RETRY: to be delivered again; the others were answered).",
            labels=["status"],
        )
        for status in STATUSES:
            outcomes.add_metric([status], now.outcomes.get(status, 0))
        yield outcomes
        yield GaugeMetricFamily(
            "widget_consumer_messages_held",
            "Requests received and not yet answered by the maker: waiting for a worker or a rate slot, "
            "or in a maker call (the heartbeat keeps them invisible).",
            value=now.held,
        )
        yield GaugeMetricFamily(
            "widget_consumer_maker_calls_in_flight", "Maker calls under way.", value=now.maker_calls_in_flight
        )
        yield GaugeMetricFamily(
            "widget_consumer_outbox_backlog",
            "Settlements and visibility changes queued for SQS and not yet confirmed by it "
            "(past 500 the consumer stops receiving until they are).",
            value=now.outbox_backlog,
        )
        yield GaugeMetricFamily(
            "widget_consumer_outbox_oldest_seconds",
            "Age of the oldest write SQS has not yet confirmed (past 10 s the consumer stops receiving).",
            value=now.outbox_oldest_seconds,
        )
        yield StateSetMetricFamily(
            "widget_consumer_breaker_state",
            "The circuit breaker toward the maker: closed (normal), open (maker down), half-open (trying).",
            value={state: state == now.breaker_state for state in BREAKER_STATES},
        )
        yield CounterMetricFamily(
            "widget_consumer_breaker_opened",
            "Maker outages begun (the breaker opened).",
            value=now.breaker_opened,
        )
        yield CounterMetricFamily(
            "widget_consumer_breaker_open_seconds",
            "Seconds the breaker spent open or half-open, the current outage included.",
            value=now.breaker_open_seconds,
        )
        yield CounterMetricFamily(
            "widget_consumer_heartbeat_extensions",
            "Visibility extensions of held requests.",
            value=now.heartbeat_extensions,
        )
        yield CounterMetricFamily(
            "widget_consumer_rate_limit_waits",
            "Maker calls that waited for a --max-rate slot.",
            value=now.rate_limit_waits,
        )
        yield CounterMetricFamily(
            "widget_consumer_rate_limit_wait_seconds",
            "Seconds maker calls waited for a --max-rate slot.",
            value=now.rate_limit_wait_seconds,
        )
        if now.last_receive is not None:
            yield GaugeMetricFamily(
                "widget_consumer_last_receive_timestamp_seconds",
                "Unix time of the last receive that SQS answered (empty or not).",
                value=now.last_receive,
            )
