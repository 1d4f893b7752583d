"""The widget consumer's command line: long-polls the request queue and POSTs each request to the maker.

Options -> Settings -> run; the consumer itself is the widgets.consumer package.
"""

from __future__ import annotations

import os
from typing import Any

import click

from widgets.cli import CONTEXT_SETTINGS, Command, relay_options, settings_options, sqs_options
from widgets.consumer import Queues, Settings, run
from widgets.consumer.signing import SECRET_ENV, parse_secrets
from widgets.logs import configure_logging


@click.command(cls=Command, context_settings=CONTEXT_SETTINGS)
@sqs_options
@click.option(
    "--dead-letter-queue",
    help="Queue that keeps requests which failed too often "
    "[default: WidgetRequestDLQ, or WidgetRequestDLQ.fifo for a FIFO request queue].",
)
@settings_options(Settings)
@relay_options
def main(
    region: str | None,
    endpoint_url: str | None,
    sqs_request_queue: str,
    sqs_response_queue: str,
    dead_letter_queue: str | None,
    create_queues: bool,
    log_level: str,
    log_format: str,
    **options: Any,
) -> None:
    """Take widget requests off the request queue and have the widget maker make them.

    Every request ends OK, REJECTED or FAILED, reported on the response queue; FAILED
    ones are also kept in the dead-letter queue. Ctrl-C or SIGTERM stops it cleanly.
    Set WIDGET_MAKER_TOKEN if the maker requires a token, and WEBHOOK_SECRET (whsec_...,
    several space-separated during a rotation) to sign each call as Standard Webhooks says.
    A request queue named *.fifo is a FIFO queue: each message group's requests are then
    made in order. The general relay, for any queue and any HTTP service, is sqs_relay.py.

    \b
    Examples:
        venv/bin/python widget_consumer.py
        venv/bin/python widget_consumer.py --region=ap-southeast-2
        venv/bin/python widget_consumer.py --retry-delay 5 --backoff exponential --max-receives 5
        venv/bin/python widget_consumer.py --sqs-request-queue WidgetRequestQueue.fifo \\
            --sqs-response-queue WidgetResponseQueue.fifo
    """
    settings = Settings(
        **options,
        token=os.environ.get("WIDGET_MAKER_TOKEN") or None,
        signing_keys=tuple(parse_secrets(os.environ.get(SECRET_ENV))),
    )
    queues = Queues(sqs_request_queue, sqs_response_queue, dead_letter_queue, create_queues)
    queues.names()  # a dead-letter queue of the wrong kind is a usage error, before logging starts
    configure_logging(log_level, log_format, background=True)
    run(region, endpoint_url, settings, queues)


if __name__ == "__main__":
    main()
