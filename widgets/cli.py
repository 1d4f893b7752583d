"""The command lines' shared part, the only module of the package that knows click.

Options that several scripts share, options generated from a settings dataclass (each declared
once, on its field: see setting()), and the library's errors turned into one line on stderr.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from widgets.errors import SetupError, UsageError
from widgets.logs import FORMATS, LEVELS
from widgets.sqs import LOCAL_ENDPOINT, REQUEST_QUEUE, RESPONSE_QUEUE

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def one_line(function: Callable[[], Any]) -> Any:
    """Run function, turning the library's user errors into click's: one line, exit 2 or 1."""
    try:
        return function()
    except UsageError as error:
        if error.option:
            raise click.BadParameter(str(error), param_hint=f"'{error.option}'") from None
        raise click.UsageError(str(error)) from None
    except SetupError as error:
        raise click.ClickException(str(error)) from None


class Command(click.Command):
    """A click command whose library errors come out as one line (see one_line)."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command."""
        return one_line(lambda: super(Command, self).invoke(ctx))


class Group(click.Group):
    """A click group whose subcommands' library errors come out as one line (see one_line)."""

    command_class = Command

    def invoke(self, ctx: click.Context) -> Any:
        """Run the group and its subcommand."""
        return one_line(lambda: super(Group, self).invoke(ctx))


def option_fields(settings: type) -> Iterator[dataclasses.Field[Any]]:
    """Yield the fields of a settings dataclass that are command-line options (declared with setting())."""
    for field in dataclasses.fields(settings):
        if "help" in field.metadata:
            yield field


def settings_options(settings: type, exclude: frozenset[str] = frozenset()) -> Callable[[F], F]:
    """Return a decorator adding one click option per option field of settings (but those excluded)."""
    hints = typing.get_type_hints(settings)

    def add(function: F) -> F:
        for field in reversed([f for f in option_fields(settings) if f.name not in exclude]):
            function = field_option(field, hints[field.name])(function)
        return function

    return add


def field_option(field: dataclasses.Field[Any], hint: Any) -> Callable[[F], F]:
    """Return the click option of one settings field: its name, type, range, default, help and envvar."""
    meta = field.metadata
    kind = next((arg for arg in typing.get_args(hint) if arg is not type(None)), hint)
    click_type: Any = kind
    if meta.get("choices"):
        click_type = click.Choice(meta["choices"])
    elif meta.get("limits") and kind is int:
        click_type = click.IntRange(*meta["limits"])
    elif meta.get("limits") and kind is float:
        click_type = click.FloatRange(*meta["limits"])
    help_text = meta["help"] + (f" [env {meta['envvar']}]" if meta.get("envvar") else "")
    return click.option(
        "--" + field.name.replace("_", "-"),
        field.name,
        type=click_type,
        default=field.default,
        show_default=field.default is not None,
        envvar=meta.get("envvar"),
        help=help_text,
    )


def endpoint_options(function: F) -> F:
    """Add the options that say where SQS is: Amazon SQS in a region, or an endpoint (the local SQS)."""
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
    ]
    for option in reversed(options):
        function = option(function)
    return function


def sqs_options(function: F) -> F:
    """Add the options every widget script takes: where SQS is and which queues to use."""
    options = [
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
    return endpoint_options(function)


def relay_options(function: F) -> F:
    """Add the options both faces of the relay take besides their settings: queue creation and logs."""
    options = [
        click.option(
            "--create-queues/--no-create-queues",
            default=True,
            show_default=True,
            help="Create the queues if they are missing.",
        ),
        click.option(
            "--log-level",
            type=click.Choice(LEVELS, case_sensitive=False),
            default="INFO",
            show_default=True,
            help="Least important log level shown.",
        ),
        click.option(
            "--log-format",
            type=click.Choice(FORMATS),
            default="text",
            show_default=True,
            help="Log line format.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function
