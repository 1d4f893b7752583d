"""sqs-relay: any SQS queue to any HTTP service, each call signed, with the widget consumer's mechanisms.

The same relay as widget_consumer.py (widgets.consumer), with the general adapter
(widgets/consumer/forward.py) in place of the widget one. Also `python -m sqs_relay`.
"""

from __future__ import annotations

import os
import re
from typing import Any

import click

from widgets.cli import CONTEXT_SETTINGS, Command, endpoint_options, relay_options, settings_options
from widgets.consumer import Queues, Settings, Target, run
from widgets.consumer.forward import ForwardAdapter
from widgets.consumer.signing import SECRET_ENV, parse_secrets
from widgets.errors import UsageError
from widgets.logs import configure_logging
from widgets.settings import check_http_url
from widgets.sqs import FIFO_SUFFIX, is_fifo

METHODS = ("POST", "PUT", "PATCH", "DELETE", "GET")
# A header's name: an HTTP token.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_headers(given: tuple[str, ...]) -> dict[str, str]:
    """Return the --header "Name: value" options as a dict; UsageError for one that is not a header."""
    headers = {}
    for header in given:
        name, colon, value = header.partition(":")
        if not colon or not HEADER_NAME.fullmatch(name.strip()) or not value.strip().isprintable():
            raise UsageError(f'{header!r} is not a header: give it as "Name: value"', "--header")
        headers[name.strip()] = value.strip()
    return headers


def dead_letter_name(queue: str) -> str:
    """Return the default dead-letter queue of a queue: <name>-DLQ, a FIFO one for a FIFO queue."""
    if is_fifo(queue):
        return queue[: -len(FIFO_SUFFIX)] + "-DLQ" + FIFO_SUFFIX
    return queue + "-DLQ"


@click.command(cls=Command, context_settings=CONTEXT_SETTINGS)
@endpoint_options
@click.option("--queue", required=True, help="The queue the messages come from (*.fifo: a FIFO queue).")
@click.option("--target-url", required=True, help="Where each message goes.")
@click.option(
    "--method",
    type=click.Choice(METHODS, case_sensitive=False),
    default="POST",
    show_default=True,
    help="The HTTP method of each call.",
)
@click.option(
    "--header", "headers", multiple=True, metavar='"NAME: VALUE"', help="A header on every call (repeatable)."
)
@click.option(
    "--content-type",
    default="application/json",
    show_default=True,
    help="Content-Type of a message without a ContentType attribute.",
)
@click.option("--response-queue", help="Where outcome reports go [default: none, no reports].")
@click.option(
    "--dead-letter-queue", help="Queue that keeps messages which failed too often [default: <queue>-DLQ]."
)
@click.option(
    "--health-url",
    help="What the circuit breaker probes while the target is down [default: a TCP connect to it].",
)
@settings_options(Settings, exclude=frozenset({"maker_url"}))
@relay_options
def main(
    region: str | None,
    endpoint_url: str | None,
    queue: str,
    target_url: str,
    method: str,
    headers: tuple[str, ...],
    content_type: str,
    response_queue: str | None,
    dead_letter_queue: str | None,
    health_url: str | None,
    create_queues: bool,
    log_level: str,
    log_format: str,
    **options: Any,
) -> None:
    """Relay each message of an SQS queue to an HTTP service, retried until the service takes it.

    The body goes as it is; message attributes go as X-SQS-Attribute-<Name> headers,
    traceparent and tracestate as they are. 2xx is OK; a 4xx other than 401, 403, 407, 408,
    409 and 429 is REJECTED at once; the rest is retried, up to --max-receives (then FAILED
    and kept in the dead-letter queue), without counting an outage of the whole service.
    Set WEBHOOK_SECRET (whsec_..., several space-separated during a rotation) to sign each
    call as Standard Webhooks says. Ctrl-C or SIGTERM stops it cleanly.

    \b
    Examples:
        venv/bin/sqs-relay --queue Orders --target-url http://127.0.0.1:8080/orders
        venv/bin/sqs-relay --queue Orders.fifo --target-url https://api.example.com/orders \\
            --header "Authorization: Bearer ..." --response-queue OrderOutcomes --region eu-west-1
    """
    check_http_url(target_url, "--target-url")
    if health_url is not None:
        check_http_url(health_url, "--health-url")
    settings = Settings(**options, signing_keys=tuple(parse_secrets(os.environ.get(SECRET_ENV))))
    adapter = ForwardAdapter(headers=parse_headers(headers), content_type=content_type)
    target = Target(target_url, adapter, method.upper(), health_url, "target")
    queues = Queues(queue, response_queue, dead_letter_queue or dead_letter_name(queue), create_queues)
    queues.names()  # a dead-letter queue of the wrong kind is a usage error, before logging starts
    configure_logging(log_level, log_format, background=True)
    run(region, endpoint_url, settings, queues, target)


if __name__ == "__main__":
    main()
