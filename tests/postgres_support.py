"""A real PostgreSQL server for the tests: initdb into a temp dir, pg_ctl start, a fresh database per test.

The server listens only on a unix socket in its own temp dir (no TCP port,
so parallel runs cannot collide) and trusts local connections. initdb and
postgres refuse to run as root, so as root (CI) they run as the `postgres`
system user (the Debian package creates it), which then owns the temp dir.

Missing binaries are an error, not a skip: the suites promise to run on
PostgreSQL, and CI installs it (.ci/run).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

SUPERUSER = "tollgate"
# Only names the socket file (.s.PGSQL.<port>): nothing listens on TCP.
SOCKET_PORT = 5432
_RUN_AS = "postgres"
_names = itertools.count()


def postgres_bin_dir() -> Path:
    """Where initdb and pg_ctl live: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if versions:
        return versions[-1].parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")


@dataclass
class PostgresServer:
    """A running throwaway server; create_database() hands out fresh databases."""

    root: Path
    bin_dir: Path

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def url(self, database: str) -> str:
        """A SQLAlchemy URL (psycopg 3) for a database on this server, over the unix socket."""
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}&port={SOCKET_PORT}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir), port=SOCKET_PORT, user=SUPERUSER, dbname=database, autocommit=True
        )

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"t{os.getpid()}_{next(_names)}"
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        _run_as_owner([str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.root / "data"), "-m", "immediate", "-w"])


def _run_as_owner(argv: list[str]) -> None:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", _RUN_AS, "--", *argv]
    subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start in a new temp dir; raises if PostgreSQL is missing or does not start."""
    bin_dir = postgres_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
    server = PostgresServer(root, bin_dir)
    server.socket_dir.mkdir()
    if os.geteuid() == 0:
        owner = pwd.getpwnam(_RUN_AS)
        for path in (root, server.socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    data = root / "data"
    try:
        _run_as_owner(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"]
        )
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{server.socket_dir}' -p {SOCKET_PORT}"
            # Throwaway data: durability is not under test, speed on a shared CI box is.
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        _run_as_owner(
            [str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-w", "-t", "60", "-o", options, "-l", str(root / "log")]
        )
    except subprocess.CalledProcessError as error:
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {error.stdout!r} {log}") from error
    return server


def running_postgres() -> Iterator[PostgresServer]:
    """Generator for a session fixture: one server, stopped and deleted at the end."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
