"""`make pg` (devtools/postgres.py): a throwaway PostgreSQL until Ctrl-C, then nothing left behind;
and one clear line where none can run."""

from __future__ import annotations

import pwd
import signal
from pathlib import Path

import psycopg
import pytest

from devtools import postgres
from devtools.stack import PYTHON, Process, free_port, port_in_use


@pytest.mark.e2e
def test_make_pg_serves_until_ctrl_c_and_leaves_nothing_behind() -> None:
    reason = postgres.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    port = free_port()
    server = Process("pg", [PYTHON, "-m", "devtools.postgres", "--port", str(port)])
    try:
        url = server.wait_for(r"PostgreSQL [\d.]+ at (postgresql://\S+) ", timeout=60).group(1)
        folder = Path(server.wait_for(r"data in (\S+),").group(1))
        assert url == f"postgresql://widgets@127.0.0.1:{port}/widgets"
        with psycopg.connect(url) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == ("widgets",)
        pid = (folder / "data" / "postmaster.pid").read_text().split()[0]
        if postgres.running_as_root():  # PostgreSQL refuses root: it runs as the postgres user
            assert Path(f"/proc/{pid}").stat().st_uid == pwd.getpwnam("postgres").pw_uid
        server.signal(signal.SIGINT)
        assert server.popen.wait(30) == 0
    finally:
        server.stop()
    assert not folder.exists()
    assert not port_in_use(port)


def test_without_the_server_programs_it_says_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(postgres, "server_bindir", lambda: None)
    assert postgres.main(["--port", str(free_port())]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        "error: PostgreSQL's server programs (initdb, pg_ctl, postgres) are not installed: "
        "apt-get install postgresql"
    )
