"""Which local SQS the demo, `make run`, `make sqs`, the bench and the tests start."""

from __future__ import annotations

import pytest

from devtools import stack
from devtools.stack import LOCAL_SQS_ENV, local_sqs_kind


@pytest.fixture
def without_fauxqs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine where fauxqs cannot run (no Node.js, or no `npm ci`), and no choice in the environment."""
    monkeypatch.delenv(LOCAL_SQS_ENV, raising=False)
    monkeypatch.setattr(stack.shutil, "which", lambda name: None)
    stack.say_fallback_once.cache_clear()


def test_without_fauxqs_moto_stands_in_and_says_so_once(
    without_fauxqs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert [local_sqs_kind(), local_sqs_kind()] == ["moto", "moto"]
    notes = capsys.readouterr().err.splitlines()
    assert notes == [
        "note: the local SQS is moto's server (slow), as fauxqs is not installed: "
        "install Node.js and npm, then run make"
    ]


def test_forcing_fauxqs_where_it_is_missing_is_a_clear_error(
    without_fauxqs: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOCAL_SQS_ENV, "fauxqs")
    with pytest.raises(ValueError, match="WIDGETS_LOCAL_SQS=fauxqs, but fauxqs is not installed"):
        local_sqs_kind()


def test_forcing_moto_says_nothing(
    without_fauxqs: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(LOCAL_SQS_ENV, "Moto")
    assert local_sqs_kind() == "moto"
    assert capsys.readouterr().err == ""


def test_an_unknown_choice_names_the_allowed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOCAL_SQS_ENV, "localstack")
    with pytest.raises(ValueError, match="use one of fauxqs, moto"):
        local_sqs_kind()


@pytest.mark.skipif(not stack.fauxqs_installed(), reason="fauxqs is not installed here")
def test_fauxqs_is_preferred_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOCAL_SQS_ENV, raising=False)
    assert local_sqs_kind() == "fauxqs"
