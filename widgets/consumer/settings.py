"""The consumer's settings: each declared once, with its command-line option (widgets/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from widgets.consumer.handling import RetryPolicy
from widgets.errors import UsageError
from widgets.settings import check_http_url, setting
from widgets.sqs import MAX_VISIBILITY


@dataclass(frozen=True)
class Settings:
    """How the consumer behaves; the fields declared with setting() are its command-line options."""

    maker_url: str = setting(
        "http://127.0.0.1:5000/add", "Where to POST widget requests.", envvar="WIDGET_MAKER_URL"
    )
    max_receives: int = setting(
        3, "Deliveries before a failing request is given up as FAILED.", limits=(1, 1000)
    )
    retry_delay: int = setting(30, "Seconds before a failed delivery is retried.", limits=(0, MAX_VISIBILITY))
    backoff: str = setting(
        "fixed",
        "Keep the retry delay fixed, double it with each delivery (exponential), or draw it at random "
        "between 0 and that double (jitter: failures together do not come back together).",
        choices=("fixed", "exponential", "jitter"),
    )
    retry_delays: str | None = setting(
        None,
        "Seconds before each retry in turn, e.g. 1,10,60,600 (the last one repeats); "
        "instead of --retry-delay and --backoff.",
    )
    visibility_timeout: int = setting(
        30,
        "Seconds a request stays hidden from other consumers after this one dies; "
        "the heartbeat extends it while a request is held.",
        limits=(1, MAX_VISIBILITY),
    )
    wait_time: int = setting(20, "Long-poll seconds per receive.", limits=(0, 20))
    batch_size: int = setting(10, "Messages per receive.", limits=(1, 10))
    http_timeout: float = setting(
        10.0,
        "Seconds to wait for the maker's answer (any length: the heartbeat covers it).",
        limits=(0.1, 3600),
    )
    max_rate: float | None = setting(
        None,
        "At most this many maker calls per second, across all workers [default: no limit].",
        limits=(0.01, 100_000),
    )
    workers: int = setting(10, "Requests handled at once.", limits=(1, 256))
    metrics_port: int | None = setting(
        None,
        "Serve Prometheus metrics at /metrics and the health at /healthz on this port "
        "(0: any free one) [default: off].",
        limits=(0, 65535),
    )
    metrics_host: str = setting(
        "127.0.0.1", "Address the metrics port listens on (0.0.0.0: every interface)."
    )
    # Not options: a secret stays off the command line (and out of `ps`): it comes from
    # WIDGET_MAKER_TOKEN; the outbox's flush interval is a knob for tests, not for operators.
    token: str | None = field(default=None, repr=False)
    signing_keys: tuple[bytes, ...] = field(default=(), repr=False)  # from WEBHOOK_SECRET (signing.py)
    flush_interval: float = 0.05

    def __post_init__(self) -> None:
        """Refuse settings that cannot work, naming the option, before anything starts."""
        check_http_url(self.maker_url, "--maker-url")
        self.delays()

    def delays(self) -> tuple[int, ...]:
        """Return the --retry-delays schedule (empty: none given); UsageError if it is not one."""
        if self.retry_delays is None:
            return ()
        try:
            delays = tuple(int(part) for part in self.retry_delays.split(","))
        except ValueError:
            delays = ()
        if not delays or not all(0 <= d <= MAX_VISIBILITY for d in delays):
            raise UsageError(
                f"give whole seconds from 0 to {MAX_VISIBILITY}, comma-separated, e.g. 1,10,60,600 "
                f"(got {self.retry_delays!r})",
                "--retry-delays",
            )
        return delays

    @property
    def policy(self) -> RetryPolicy:
        """Return the retry policy these settings describe."""
        return RetryPolicy(self.max_receives, self.retry_delay, self.backoff, delays=self.delays())
