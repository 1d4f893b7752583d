"""The widget producer's command line: sends widget requests, and can wait for their outcomes.

The work itself is widgets/producer.py.
"""

from __future__ import annotations

import sys
import time

import click
from botocore.exceptions import BotoCoreError, ClientError

from widgets.cli import CONTEXT_SETTINGS, Command, sqs_options
from widgets.messages import OK, describe_response, new_widget_id
from widgets.producer import (
    SEND_THREADS,
    SendResult,
    check_fifo_options,
    send_requests,
    wait_for_responses,
)
from widgets.sqs import (
    MAX_BATCH,
    describe_error,
    is_fifo,
    make_client,
    queue_url,
)


@click.command(cls=Command, context_settings=CONTEXT_SETTINGS)
@sqs_options
@click.option("--widget-id", help="Widget id to request (default: a new version-1 UUID).")
@click.option(
    "--count",
    type=click.IntRange(1, 1_000_000),
    default=1,
    show_default=True,
    help="Number of requests, each with a new widget id.",
)
@click.option("--wait", is_flag=True, help="Wait for the outcomes and print them; exit 1 if any is not OK.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, 3600),
    default=60,
    show_default=True,
    help="Seconds --wait waits at most.",
)
@click.option(
    "--group-id",
    help="Message group of the requests; required for a FIFO queue, no default (see above).",
)
@click.option(
    "--dedup-id",
    help="Deduplication id of the one request, FIFO queues only [default: the widget id].",
)
def main(
    region: str | None,
    endpoint_url: str | None,
    sqs_request_queue: str,
    sqs_response_queue: str,
    widget_id: str | None,
    count: int,
    wait: bool,
    timeout: float,
    group_id: str | None,
    dedup_id: str | None,
) -> None:
    """Send widget requests ({"WidgetId": "<id>"}) to the request queue.

    Prints one line per request sent: its message id and widget id.

    A queue whose name ends in .fifo is a FIFO queue: SQS hands out the requests of one message
    group in the order they were sent, one at a time. --group-id is required there and has no
    default, because only you know what must stay in order: give one group to the requests
    that must be made in order (say, one customer's) and different groups to the rest. One
    fixed group would make every request wait for the one before it; a new group per request
    would order nothing. Each request's deduplication id is its widget id, so a widget sent
    again within SQS's five minutes is one request; --dedup-id sets another one for a single
    request. On a standard queue --group-id makes SQS share the consumers fairly between
    groups (fair queues).

    \b
    Examples:
        venv/bin/python widget_producer.py
        venv/bin/python widget_producer.py --widget-id=31f37378-54f4-11e5-ad75-3c970e65f731
        venv/bin/python widget_producer.py --count 500
        venv/bin/python widget_producer.py --region=ap-southeast-2 --wait
        venv/bin/python widget_producer.py --sqs-request-queue=WidgetRequestQueue.fifo \\
            --group-id=customer-42 --count 10
    """
    if widget_id is not None and count != 1:
        raise click.UsageError("--widget-id sends one request; it cannot go with --count")
    check_fifo_options(sqs_request_queue, group_id, dedup_id, count)
    sqs = make_client(region, endpoint_url, max_connections=SEND_THREADS + 2)
    request_url = queue_url(sqs, sqs_request_queue)
    response_url = queue_url(sqs, sqs_response_queue) if wait else None
    widget_ids = [widget_id] if widget_id is not None else [new_widget_id() for _ in range(count)]

    started = time.monotonic()
    show_progress = count > MAX_BATCH and sys.stderr.isatty()
    with click.progressbar(
        length=count, label="sending", file=sys.stderr, hidden=not show_progress
    ) as progress:

        def report(batch: SendResult) -> None:
            for message_id, sent_id in batch.sent:
                click.echo(f"{message_id} {sent_id}")
            progress.update(len(batch.sent) + len(batch.failed))

        result = send_requests(
            sqs, request_url, widget_ids, on_batch=report, group_id=group_id, dedup_id=dedup_id
        )
    elapsed = time.monotonic() - started
    if count > 1:
        rate = len(result.sent) / elapsed if elapsed > 0 else 0.0
        click.echo(f"sent {len(result.sent)} requests in {elapsed:.2f}s ({rate:.0f}/s)", err=True)
    if result.failed:
        widget, reason = result.failed[0]
        raise click.ClickException(
            f"{len(result.failed)} of {count} requests were not sent (first: {widget}: {reason})"
        )

    if response_url is not None:
        try:
            # On a FIFO request queue a widget sent twice is one request, answered under either send.
            by_widget = {w: m for m, w in result.sent} if is_fifo(request_url) else None
            responses = wait_for_responses(sqs, response_url, [m for m, _ in result.sent], timeout, by_widget)
        except (BotoCoreError, ClientError) as exc:
            raise click.ClickException(describe_error(exc, sqs, sqs_response_queue)) from exc
        for message_id, _ in result.sent:
            if message_id in responses:
                click.echo(describe_response(responses[message_id]))
        missing = len(result.sent) - len(responses)
        not_ok = sum(1 for r in responses.values() if r.get("Status") != OK)
        if missing:
            raise click.ClickException(
                f"{missing} of {len(result.sent)} responses did not come within {timeout:g}s"
            )
        if not_ok:
            raise click.ClickException(f"{not_ok} of {len(result.sent)} requests did not end OK")


if __name__ == "__main__":
    main()
