"""The widget queues' day-to-day care, its command line: how full they are, redrive, responses.

The work itself is widgets/queues.py.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from widgets.cli import CONTEXT_SETTINGS, Group, sqs_options
from widgets.messages import describe_response
from widgets.queues import (
    WATCH_RANGE,
    WATCH_SECONDS,
    QueueStatus,
    RedriveResult,
    Refresh,
    move_messages,
    queue_status,
    read_responses,
    redraw,
    status_table,
    watch,
    watch_line,
    watch_table,
)
from widgets.sqs import (
    REQUEST_QUEUE,
    check_dead_letter_queue,
    dead_letter_queue_name,
    describe_error,
    is_fifo,
    make_client,
    queue_url,
    user_errors,
)

if TYPE_CHECKING:
    pass


def default_dead_letter_queue(context: click.Context, _: click.Parameter, value: str | None) -> str:
    """Return the dead-letter queue given, or by default the one of the request queue's kind."""
    # Click has already read --sqs-request-queue: it is declared first, or was given first.
    return value or dead_letter_queue_name(context.params.get("sqs_request_queue", REQUEST_QUEUE))


dead_letter_option = click.option(
    "--dead-letter-queue",
    callback=default_dead_letter_queue,
    help="Queue that keeps requests which failed too often "
    "[default: WidgetRequestDLQ, or WidgetRequestDLQ.fifo for a FIFO request queue].",
)
wait_time_option = click.option(
    "--wait-time",
    type=click.IntRange(0, 20),
    default=1,
    show_default=True,
    help="Long-poll seconds per receive; a receive that brings nothing new ends the run.",
)


def watch_seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Check the seconds given to --watch."""
    low, high = WATCH_RANGE
    if value is not None and not low <= value <= high:  # written so that nan fails too
        raise click.BadParameter(
            f"give the seconds between refreshes, from {low:g} to {high:g} (got {value:g})"
        )
    return value


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
def main() -> None:
    """Look after the widget queues: how full they are, failed requests, waiting responses.

    Each command acts on the local SQS unless --region or --endpoint-url says otherwise.

    \b
    Examples:
        venv/bin/python widget_queues.py status
        venv/bin/python widget_queues.py redrive --max 100
        venv/bin/python widget_queues.py responses --delete
    """


@main.command(context_settings=CONTEXT_SETTINGS)
@sqs_options
@dead_letter_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option(
    "--watch",
    type=float,
    is_flag=False,
    flag_value=WATCH_SECONDS,
    default=None,
    metavar="[SECONDS]",
    callback=watch_seconds,
    help=f"Refresh every SECONDS ({WATCH_SECONDS:g} if not given) with each count's rate of change, "
    "until Ctrl-C.",
)
@click.option("--count", type=click.IntRange(1), help="With --watch: stop after this many refreshes.")
def status(
    region: str | None,
    endpoint_url: str | None,
    sqs_request_queue: str,
    sqs_response_queue: str,
    dead_letter_queue: str,
    as_json: bool,
    watch: float | None,
    count: int | None,
) -> None:
    """Show each queue's messages: visible, in flight and delayed.

    In flight means received and not yet deleted; delayed, sent with a delay not yet over. A
    queue that does not exist shows as missing. The age of the oldest message is n/a: SQS
    reports it only to CloudWatch (ApproximateAgeOfOldestMessage).

    With --watch the table is redrawn in place, with how fast each count changes (per second,
    since the previous refresh); when the output is not a terminal, each refresh is one line
    (with --json, one JSON object).

    \b
    Examples:
        venv/bin/python widget_queues.py status
        venv/bin/python widget_queues.py status --json --region=ap-southeast-2
        venv/bin/python widget_queues.py status --watch
        venv/bin/python widget_queues.py status --watch 10 --count 6 >> queues.log
    """
    if count is not None and watch is None:
        raise click.UsageError("--count needs --watch")
    sqs = make_client(region, endpoint_url)
    names = {"request": sqs_request_queue, "response": sqs_response_queue, "dead_letter": dead_letter_queue}

    def fetch() -> dict[str, QueueStatus]:
        """Return every queue's status by role."""
        return {role: queue_status(sqs, name) for role, name in names.items()}

    if watch is not None:
        watch_queues(sqs.meta.endpoint_url, fetch, watch, count, as_json)
        return
    statuses = fetch()
    if as_json:
        click.echo(json.dumps({role: asdict(queue) for role, queue in statuses.items()}))
        return
    click.echo(f"queues at {sqs.meta.endpoint_url}")
    for line in status_table(statuses):
        click.echo(line)


def watch_queues(
    endpoint: str,
    fetch: Callable[[], dict[str, QueueStatus]],
    interval: float,
    count: int | None,
    as_json: bool,
) -> None:
    """Run status --watch: a table redrawn in place on a terminal, else a line per refresh, until Ctrl-C."""
    in_place = sys.stdout.isatty() and not as_json
    drawn = 0

    def show(refresh: Refresh) -> None:
        """Print one refresh in the form the output calls for."""
        nonlocal drawn
        now = time.strftime("%H:%M:%S")
        if as_json:
            queues = {role: asdict(queue) for role, queue in refresh.statuses.items()}
            click.echo(json.dumps({"error": refresh.error} if refresh.error is not None else queues))
        elif in_place:
            lines = [
                f"{now}  queues at {endpoint}, every {interval:g}s (Ctrl-C stops)",
                *watch_table(refresh),
            ]
            click.echo(redraw(lines, drawn), nl=False)
            drawn = len(lines)
        else:
            click.echo(watch_line(refresh, now))

    if not in_place:
        click.echo(f"queues at {endpoint}, every {interval:g}s (Ctrl-C stops)", err=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a watch ends
        watch(fetch, show, interval, count)


@main.command(context_settings=CONTEXT_SETTINGS)
@sqs_options
@dead_letter_option
@click.option("--max", "limit", type=click.IntRange(1), help="Move at most this many messages.")
@wait_time_option
def redrive(
    region: str | None,
    endpoint_url: str | None,
    sqs_request_queue: str,
    sqs_response_queue: str,
    dead_letter_queue: str,
    limit: int | None,
    wait_time: int,
) -> None:
    """Send the dead-letter queue's requests back to be tried again.

    Moves every message of the dead-letter queue to the request queue, printing progress.
    Bodies, message attributes and message groups are kept; each copy is a new message, so its
    receive count starts again. To a FIFO queue the copies go in the order of each group, each
    with a deduplication id of its own (not the original request's, which SQS might still take
    for a duplicate). A message leaves the dead-letter queue only after its copy was sent, so an
    interrupted redrive loses nothing and can be run again (the messages it held come back
    within 30 seconds); at worst a few requests are then sent twice.

    \b
    Examples:
        venv/bin/python widget_queues.py redrive
        venv/bin/python widget_queues.py redrive --max 100 --dead-letter-queue=MyDLQ
    """
    if dead_letter_queue == sqs_request_queue:
        raise click.UsageError("--dead-letter-queue and --sqs-request-queue must be different queues")
    try:
        check_dead_letter_queue(sqs_request_queue, dead_letter_queue)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    sqs = make_client(region, endpoint_url)
    source_url = queue_url(sqs, dead_letter_queue)
    target_url = queue_url(sqs, sqs_request_queue)
    moved = 0

    def report(batch: RedriveResult) -> None:
        """Print how a batch went and how many moved so far."""
        nonlocal moved
        moved += batch.moved
        click.echo(f"moved {batch.moved} of {batch.received} ({moved} so far)", err=True)

    try:
        result = move_messages(sqs, source_url, target_url, limit, wait_time, on_batch=report)
    except (BotoCoreError, ClientError) as error:
        raise click.ClickException(
            f"{describe_error(error, sqs)}; moved {moved} messages before that, "
            f"the rest stay in {dead_letter_queue}"
        ) from error
    click.echo(f"moved {result.moved} messages from {dead_letter_queue} to {sqs_request_queue}")
    if result.not_sent:
        message, reason = result.not_sent[0]
        raise click.ClickException(
            f"{len(result.not_sent)} messages could not be sent and stay in {dead_letter_queue} "
            f"(first: {message['MessageId']}: {reason}); run redrive again"
        )
    if result.not_deleted:
        message_id, reason = result.not_deleted[0]
        raise click.ClickException(
            f"{len(result.not_deleted)} messages were copied but not deleted from {dead_letter_queue} "
            f"(first: {message_id}: {reason}); another redrive would copy them again"
        )
    # Checked only when nothing moved: SQS's counts lag, and would show what this run just deleted.
    left = queue_status(sqs, dead_letter_queue) if not result.moved else None
    if left is not None and left.in_flight:
        click.echo(
            f"{left.in_flight} messages of {dead_letter_queue} are in flight (held by another reader "
            "or an interrupted redrive); run redrive again once they are visible",
            err=True,
        )


@main.command(context_settings=CONTEXT_SETTINGS)
@sqs_options
@click.option("--delete", is_flag=True, help="Delete the responses printed (only those).")
@click.option("--json", "as_json", is_flag=True, help="Print each response as a JSON line.")
@click.option("--max", "limit", type=click.IntRange(1), help="Print at most this many responses.")
@wait_time_option
def responses(
    region: str | None,
    endpoint_url: str | None,
    sqs_request_queue: str,
    sqs_response_queue: str,
    delete: bool,
    as_json: bool,
    limit: int | None,
    wait_time: int,
) -> None:
    """Print the responses waiting on the response queue.

    One line each: status, widget id, receive count and reason. Without --delete they stay
    on the queue, visible again as soon as this ends. On a FIFO queue SQS hands out no more
    of a message group while some of it is held, so without --delete a run shows only the
    first responses of each group (up to ten); --delete reads them all, in order.

    \b
    Examples:
        venv/bin/python widget_queues.py responses
        venv/bin/python widget_queues.py responses --json --max 50
        venv/bin/python widget_queues.py responses --delete
    """
    sqs = make_client(region, endpoint_url)
    url = queue_url(sqs, sqs_response_queue)

    def show(response: dict[str, Any]) -> None:
        """Print one response."""
        click.echo(json.dumps(response) if as_json else describe_response(response))

    with user_errors(sqs, sqs_response_queue):
        result = read_responses(sqs, url, show, delete, limit, wait_time)
    if not result.read:
        click.echo(f"no responses waiting on {sqs_response_queue}", err=True)
    else:
        done = "deleted them" if delete else f"left them on {sqs_response_queue}"
        click.echo(f"read {result.read} responses; {done}", err=True)
        if is_fifo(sqs_response_queue) and not delete:
            click.echo("FIFO queue: only the first responses of each group; --delete reads all", err=True)
    if result.not_deleted:
        message_id, reason = result.not_deleted[0]
        raise click.ClickException(
            f"{len(result.not_deleted)} responses were printed but not deleted "
            f"(first: {message_id}: {reason})"
        )


if __name__ == "__main__":
    main()
