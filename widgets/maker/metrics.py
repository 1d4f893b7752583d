"""The maker's Prometheus metrics; the only maker-side module that imports prometheus_client."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

# Methods the maker can be asked for; any other name a client makes up counts as "other",
# so a client cannot create label values (and series) at will.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The route label of a request that matched no URL rule (404 and 405 from routing).
UNMATCHED = "unmatched"
# A request is a few SQLite statements, about a millisecond; the buckets reach 10 s for stalls.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MakerMetrics:
    """Counters and a latency histogram of one maker app, in a registry of their own."""

    def __init__(self) -> None:
        """Create the metrics in a new registry, so that every app (and test) counts on its own."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "widget_maker_requests",
            "HTTP requests answered, by URL rule, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "widget_maker_request_duration_seconds",
            "Time from a request's start to its answer, by URL rule and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.widgets_created = Counter(
            "widget_maker_widgets_created",
            "Widgets created (POST /add answered 201).",
            registry=self.registry,
        )
        self.idempotent_repeats = Counter(
            "widget_maker_idempotent_repeats",
            "POST /add requests for a widget that already existed (answered 200, nothing created).",
            registry=self.registry,
        )
        # Each request's series, looked up once: labels() takes a lock and builds its key on every
        # call. Keyed by the bounded label values, so the cache is as bounded as the series.
        self._children: dict[tuple[str | None, str, int], tuple[Counter, Histogram]] = {}

    def observe_request(self, route: str | None, method: str, status: int, seconds: float | None) -> None:
        """Count one answered request and, when its start is known, its latency."""
        method_label = method if method in KNOWN_METHODS else "other"
        key = (route, method_label, status)
        children = self._children.get(key)
        if children is None:
            route_label = route if route is not None else UNMATCHED
            children = self._children[key] = (
                self.requests.labels(route_label, method_label, str(status)),
                self.latency.labels(route_label, method_label),
            )
        requests, latency = children
        requests.inc()
        if seconds is not None:
            latency.observe(seconds)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Return the metrics in the format the Accept header asks for, and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
