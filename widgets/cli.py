"""Command-line options that several scripts share, so each is spelled and explained once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from widgets.sqs import LOCAL_ENDPOINT, REQUEST_QUEUE, RESPONSE_QUEUE

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def sqs_options(function: F) -> F:
    """Add the options every SQS script takes: where SQS is and which queues to use."""
    options = [
        click.option(
            "--region",
            envvar=["AWS_REGION", "AWS_DEFAULT_REGION"],
            help="AWS region of Amazon SQS [env AWS_REGION]. Without it and without an "
            f"endpoint, the local SQS at {LOCAL_ENDPOINT} is used.",
        ),
        click.option(
            "--endpoint-url",
            envvar=["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"],
            help="SQS endpoint, e.g. the local SQS [env AWS_ENDPOINT_URL].",
        ),
        click.option(
            "--sqs-request-queue",
            default=REQUEST_QUEUE,
            show_default=True,
            help="Queue the widget requests go to.",
        ),
        click.option(
            "--sqs-response-queue",
            default=RESPONSE_QUEUE,
            show_default=True,
            help="Queue the outcomes are reported on.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function
