"""The make targets that run one script use the local SQS unless ARGS says otherwise, even when the
shell exports an AWS region, as on many AWS users' machines."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from devtools.stack import PYTHON, ROOT, free_port
from widgets.sqs import LOCAL_ENDPOINT

ONE_SCRIPT_TARGETS = ["consumer", "produce", "status", "redrive", "responses"]
NO_CREDENTIALS = "no AWS credentials found"


@pytest.fixture
def amazon_shell() -> dict[str, str]:
    """A shell's environment that exports an AWS region, with no AWS credentials at all.

    Built from scratch: nothing of this process's environment (a test's credentials, an outer
    make's ARGS and MAKEFLAGS) leaks in. Should anything still reach for Amazon, the proxy
    variables send it to a closed port on this machine.
    """
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/nonexistent"),
        "LANG": "C.UTF-8",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
        "HTTPS_PROXY": f"http://127.0.0.1:{free_port()}",
        "HTTP_PROXY": f"http://127.0.0.1:{free_port()}",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command in the project; return its result with output captured."""
    return subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_script_alone_follows_an_exported_region(amazon_shell: dict[str, str]) -> None:
    # The control: run directly, the script takes AWS_REGION to mean Amazon SQS, and refuses to
    # go there without credentials (before any network call).
    result = run([PYTHON, "widget_queues.py", "status"], amazon_shell)
    assert result.returncode == 1
    assert NO_CREDENTIALS in result.stderr


def test_make_status_uses_the_local_sqs_despite_an_exported_region(amazon_shell: dict[str, str]) -> None:
    # Whether a local SQS runs on 9324 or not, the answer names it: the status table, a missing
    # queue or "cannot reach SQS at" it. Had it gone to Amazon, it would say no credentials.
    result = run(["make", "--no-print-directory", "-s", "status"], amazon_shell)
    output = result.stdout + result.stderr
    assert f"at {LOCAL_ENDPOINT}" in output, output
    assert NO_CREDENTIALS not in output


def test_make_status_goes_to_amazon_when_args_say_so(amazon_shell: dict[str, str]) -> None:
    result = run(["make", "--no-print-directory", "-s", "status", "ARGS=--region eu-west-1"], amazon_shell)
    assert result.returncode != 0
    assert NO_CREDENTIALS in result.stderr


def test_every_one_script_target_drops_the_exported_region_and_endpoint() -> None:
    # The targets that would write to a queue are only read here (make -n), never run.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "ARGS")}
    result = run(["make", "--no-print-directory", "-n", *ONE_SCRIPT_TARGETS], env)
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if re.search(r"widget_\w+\.py", line)]
    assert len(commands) == len(ONE_SCRIPT_TARGETS)
    for command in commands:
        dropped = set(re.findall(r"-u (\S+)", command.split(" venv/bin/python ")[0]))
        assert {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"} <= dropped
