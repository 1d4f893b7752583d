"""A throwaway PostgreSQL server on 127.0.0.1, for the tests, the bench and `make pg`.

Each server is a cluster of its own (initdb) in a new temporary folder, on a free port, with no
password (trust, and only 127.0.0.1 listens), removed when stopped. PostgreSQL refuses to run as
root, and the sessions and CI here run as root: then the cluster belongs to, and the server runs as,
the `postgres` system user that Debian's package creates (through runuser). Its server programs
(initdb, pg_ctl, postgres) come from `pg_config --bindir` or /usr/lib/postgresql/*/bin.

`make pg` runs one in the foreground on 127.0.0.1:5432 until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg import sql

from devtools.stack import free_port, port_in_use, stop_on_signals

INSTALL_HINT = "apt-get install postgresql"
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
RUN_AS = "postgres"  # the system user the server runs as when we are root
SUPERUSER = "widgets"
DATABASE = "widgets"
PG_PORT = 5432
# For the tests: a throwaway cluster need not survive a crash of the machine.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def major_version(bindir: Path) -> int:
    """Return the major version a Debian bin folder is for (/usr/lib/postgresql/15/bin: 15), or 0."""
    return int(bindir.parent.name) if bindir.parent.name.isdigit() else 0


def server_bindir() -> Path | None:
    """Return the folder holding PostgreSQL's server programs, or None when they are not installed."""
    candidates = sorted(Path("/").glob(DEBIAN_BINDIRS.lstrip("/")), key=major_version, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        answer = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if answer.returncode == 0:
            candidates.insert(0, Path(answer.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if all((folder / program).is_file() for program in SERVER_PROGRAMS):
            return folder
    return None


def running_as_root() -> bool:
    """Tell whether this process runs as root (PostgreSQL then has to run as another user)."""
    return os.geteuid() == 0


def unavailable_reason() -> str | None:
    """Say in one line why no PostgreSQL server can be started here, or None when one can."""
    if server_bindir() is None:
        return f"PostgreSQL's server programs (initdb, pg_ctl, postgres) are not installed: {INSTALL_HINT}"
    if running_as_root():
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return (
                f"PostgreSQL refuses to run as root, and there is no {RUN_AS!r} user to run it as "
                f"({INSTALL_HINT} creates one)"
            )
    return None


def server_version() -> str:
    """Return the version of the PostgreSQL server programs found here (15.18, say)."""
    bindir = server_bindir()
    if bindir is None:
        raise RuntimeError(unavailable_reason())
    answer = subprocess.run([bindir / "postgres", "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"\d+(\.\d+)+", answer.stdout)
    return match.group(0) if match else answer.stdout.strip()


class PostgresServer:
    """One throwaway PostgreSQL cluster on 127.0.0.1, in a temporary folder of its own."""

    def __init__(self, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        """Create the cluster (initdb) with its database `widgets`; start it with start()."""
        reason = unavailable_reason()
        bindir = server_bindir()
        if reason is not None or bindir is None:
            raise RuntimeError(reason)
        self.bindir = bindir
        # A port held by free_port (which PostgreSQL can still bind: it sets SO_REUSEADDR), so a
        # restart finds it free.
        self.port = port or free_port()
        self.settings = {"listen_addresses": "127.0.0.1", **(settings or {})}
        # Under /tmp, not a test's tmp_path: the server's user must be able to reach the folder,
        # and pytest's folders are root's alone.
        self.folder = Path(tempfile.mkdtemp(prefix="widgets-pg-"))
        if running_as_root():
            shutil.chown(self.folder, RUN_AS, RUN_AS)
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self._run(
            *("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust"),
            *("-E", "UTF8", "--locale=C", "--no-sync"),
        )

    def _run(self, program: str, *args: str) -> str:
        """Run one of the server programs (as the postgres user when we are root); return its output."""
        argv = [str(self.bindir / program), *args]
        if running_as_root():
            argv = ["runuser", "-u", RUN_AS, "--", *argv]
        answer = subprocess.run(
            argv, cwd=self.folder, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if answer.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed:\n{answer.stdout}{answer.stderr}{log}")
        return answer.stdout

    def url(self, database: str = DATABASE) -> str:
        """Return the URL of a database of this server."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections; create `widgets` the first time."""
        options = [f"-p {self.port}", f"-k {self.folder}"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            " ".join(options),
        )
        self.create_database(DATABASE, exist_ok=True)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: fast (end sessions, then stop cleanly) or immediate (as a crash would)."""
        self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data))

    def running(self) -> bool:
        """Tell whether the server runs (its postmaster.pid exists)."""
        return (self.data / "postmaster.pid").exists()

    def pid(self) -> int:
        """Return the process id of the running server (the postmaster)."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        """Create an empty database on the running server; return its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists is None or not exist_ok:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def remove(self) -> None:
        """Stop the server if it runs and delete its folder."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a throwaway PostgreSQL in the foreground; stop it and remove its data on Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m devtools.postgres", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=PG_PORT, help=f"port on 127.0.0.1 (default {PG_PORT})")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 1
    if port_in_use(args.port):
        print(
            f"error: port {args.port} is in use (another `make pg`, or a PostgreSQL of the system?)",
            file=sys.stderr,
        )
        return 1
    stop = stop_on_signals()
    server = PostgresServer(args.port)
    try:
        server.start()
        print(
            f"PostgreSQL {server_version()} at {server.url()} (no password, 127.0.0.1 only; data in "
            f"{server.folder}, run as {RUN_AS if running_as_root() else 'this user'}); Ctrl-C stops it "
            "and deletes its data",
            flush=True,
        )
        print(f"try it: make run DB={server.url()}", flush=True)
        while not stop.wait(0.5):
            if not server.running():
                print(
                    f"PostgreSQL exited:\n{server.log.read_text(errors='replace')[-2000:]}", file=sys.stderr
                )
                return 1
        return 0
    finally:
        server.remove()


if __name__ == "__main__":
    sys.exit(main())
