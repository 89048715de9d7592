"""Shared fixtures for the whole suite, and the whole-run check that no secret reaches a log."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_core.observability.log_format import CHATTY_LOGGERS
from tests.log_leaks import SecretWatch
from tests.postgres_support import PostgresServer, running_postgres
from tests.store_support import sqlite_url

_watch: SecretWatch | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _watch
    log_file = Path(tempfile.mkdtemp(prefix="tollgate-test-logs-")) / "all.log"
    _watch = SecretWatch(log_file)
    _watch.start()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Commands under test (the CLI) configure process logging; undo it so later tests log as before."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    quieted = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    yield
    for name, old in quieted.items():
        logging.getLogger(name).setLevel(old)
    for handler in list(root.handlers):
        if handler not in handlers and getattr(handler, "_tollgate_handler", False):
            root.removeHandler(handler)
    root.setLevel(level)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _watch is None:
        return
    _watch.stop()
    leaks = _watch.leaks()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
    if leaks:
        if reporter is not None:
            reporter.write_line(
                f"SECRET LEAK: {len(leaks)} issued or configured key(s) appear in the test run's logs "
                f"({_watch.log_file}); first: {leaks[0][:12]}...",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter is not None:
        reporter.write_line(
            f"log secret check: {len(_watch.secrets)} keys, none in {_watch.log_file.stat().st_size} bytes of logs"
        )



# The store and ledger suites run on every backend Tollgate supports.
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session, started on first use."""
    yield from running_postgres()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a fresh, empty database: a SQLite file, or a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()
