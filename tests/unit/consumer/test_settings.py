"""The consumer's command line: one option per setting, and the metrics port's mistakes in one line."""

from __future__ import annotations

import dataclasses
import socket

from click.testing import CliRunner

import widget_consumer
from widgets.consumer import Settings

# Settings without an option, on purpose: a secret stays off the command line (and out of
# `ps`), and the outbox's flush interval is a tuning knob for tests, not for operators.
NOT_OPTIONS = {"token", "signing_keys", "flush_interval"}  # from WIDGET_MAKER_TOKEN, WEBHOOK_SECRET


def test_every_setting_is_an_option() -> None:
    options = {param.name for param in widget_consumer.main.params}
    settings = {field.name for field in dataclasses.fields(Settings)}
    assert settings - options == NOT_OPTIONS


def test_every_option_default_is_the_setting_default() -> None:
    for param in widget_consumer.main.params:
        if param.name in {field.name for field in dataclasses.fields(Settings)}:
            assert param.default == getattr(Settings, str(param.name)), param.name


def test_a_metrics_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(widget_consumer.main, ["--metrics-port", str(port)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: --metrics-port: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_a_metrics_host_that_is_not_an_address_is_one_line() -> None:
    result = CliRunner().invoke(
        widget_consumer.main, ["--metrics-port", "0", "--metrics-host", "no-such-host.invalid"]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: --metrics-port: cannot listen on no-such-host.invalid:0: ")
    assert len(result.output.splitlines()) == 1


def test_a_metrics_port_out_of_range_is_refused() -> None:
    result = CliRunner().invoke(widget_consumer.main, ["--metrics-port", "70000"])
    assert result.exit_code == 2
    assert "'--metrics-port'" in result.output and "0<=x<=65535" in result.output
