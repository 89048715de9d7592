"""Schema migrations, run programmatically (no alembic.ini needed at runtime).

The migration scripts ship inside this package (migrations/), so an installed
Tollgate upgrades its own database on start. ``sql_script(url)`` renders the
same migrations as SQL, for operators who apply schema changes by hand.
"""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, text

from gateway_core.store.engine import WRITE_OPTION, make_engine

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
# PostgreSQL advisory lock key of schema upgrades (any fixed bigint; "tollgate migrate" in ASCII-ish).
MIGRATION_LOCK_KEY = 7_206_183_001


def alembic_config(url: str | None = None) -> Config:
    """An in-memory alembic Config pointing at the packaged migrations."""
    config = Config()
    # ConfigParser interpolates '%', so a path or URL containing one must be escaped.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    """Upgrades the schema through an open connection, inside its transaction."""
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    """Upgrades the schema in one transaction (a write transaction on SQLite).

    Replicas starting together may all call this: on PostgreSQL the first
    takes a transaction-scoped advisory lock and the others wait for it,
    then find the schema current (SQLite's BEGIN IMMEDIATE serializes them).
    """
    with engine.connect() as connection:
        connection.execution_options(**{WRITE_OPTION: True})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            upgrade_connection(connection, revision)


def current_revision(url: str) -> str | None:
    """The schema revision of the database at url (None: never migrated)."""
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Brings the database at url up to the given revision (default: the newest)."""
    engine = make_engine(url)
    try:
        upgrade_engine(engine, revision)
    finally:
        engine.dispose()


def sql_script(url: str, revision: str = "head") -> str:
    """The SQL that upgrading an empty database at url would run (offline mode)."""
    buffer = io.StringIO()
    config = alembic_config(url)
    config.output_buffer = buffer
    command.upgrade(config, revision, sql=True)
    return buffer.getvalue()
