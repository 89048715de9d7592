"""The `tollgate` command: serve (core + facade), core, facade, migrate, admin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import click
import uvicorn

from gateway_core.config import ConfigError, Settings, load_settings

log = logging.getLogger("tollgate")

_CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TOLLGATE_CONFIG",
    help="TOML configuration file (env TOLLGATE_CONFIG). Without one, embedded defaults are used.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"]))
def main(log_level: str) -> None:
    """Tollgate: one OpenAI-compatible endpoint and key for every AI model.

    \b
    Examples:
      tollgate serve                      # everything, on embedded defaults
      tollgate serve --config tollgate.toml
      tollgate core --config tollgate.toml
      tollgate facade --core 127.0.0.1:50051
      tollgate admin accounts list
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # alembic narrates every plugin and migration step at INFO; only problems matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    # httpx logs every upstream request at INFO: a formatted line per call on the hot path.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


@main.command()
@_CONFIG_OPTION
def serve(config_path: Path | None) -> None:
    """Run the gRPC core and the OpenAI-compatible HTTP facade together.

    With no --config it runs on embedded defaults: SQLite in the working
    directory, the offline mock provider, and OpenAI when OPENAI_API_KEY is
    set. On first start it creates a demo account and prints its key once.

    \b
    Example:
      tollgate serve
      curl http://127.0.0.1:8080/v1/models -H "Authorization: Bearer $KEY"
    """
    settings = _load(config_path)
    _event_loop_run(_run(settings, core=True, facade_core_target=None))


@main.command()
@_CONFIG_OPTION
def core(config_path: Path | None) -> None:
    """Run only the gRPC core (Chat, Metering, Admin, health, reflection).

    \b
    Example:
      tollgate core --config tollgate.toml
      grpcurl -plaintext 127.0.0.1:50051 list
    """
    settings = _load(config_path)
    _event_loop_run(_run(settings, core=True, facade_core_target=None, facade=False))


@main.command()
@click.option("--core", "core_target", required=True, help="HOST:PORT of a running core.")
@click.option("--listen", default=None, help="HOST:PORT to serve HTTP on (default: server.http_address).")
@_CONFIG_OPTION
def facade(core_target: str, listen: str | None, config_path: Path | None) -> None:
    """Run only the OpenAI-compatible HTTP facade, in front of a running core.

    \b
    Example:
      tollgate facade --core 127.0.0.1:50051 --listen 0.0.0.0:8080
    """
    settings = _load(config_path)
    if listen:
        settings = _with_http_address(settings, listen)
    _event_loop_run(_run(settings, core=False, facade_core_target=core_target))


@main.command()
@click.option("--sql", "print_sql", is_flag=True, help="Print the upgrade SQL instead of running it.")
@_CONFIG_OPTION
def migrate(print_sql: bool, config_path: Path | None) -> None:
    """Upgrade the database ([database] url) to this version's schema, then exit.

    Safe to run while cores serve and from several places at once (PostgreSQL
    serializes it with an advisory lock). Run it as a deploy step before new
    cores start, and set [database] migrate_on_start = false on the cores.

    \b
    Example:
      tollgate migrate --config tollgate.toml
      tollgate migrate --sql --config tollgate.toml > upgrade.sql
    """
    from sqlalchemy.exc import SQLAlchemyError

    from gateway_core.store import migrate as schema

    settings = _load(config_path)
    if print_sql:
        if not settings.database_url.startswith("postgresql"):  # SQLite's table copies need a live database
            click.echo("migrate --sql renders SQL for PostgreSQL; run `tollgate migrate` for SQLite", err=True)
            sys.exit(2)
        click.echo(schema.sql_script(settings.database_url))
        return
    try:
        before = schema.current_revision(settings.database_url)
        schema.upgrade(settings.database_url)
        after = schema.current_revision(settings.database_url)
    except SQLAlchemyError as error:  # the URL may hold a password: report the error, not the URL
        click.echo(f"migrate failed: {type(error).__name__}: {getattr(error, 'orig', None) or error}", err=True)
        sys.exit(1)
    click.echo(f"database schema at revision {after} (was {before or 'empty'})")


def _mount_admin() -> None:
    from admin.cli import admin_group

    main.add_command(admin_group, name="admin")


_mount_admin()


def _load(config_path: Path | None) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as error:
        for line in error.problems:
            click.echo(f"config error: {line}", err=True)
        sys.exit(2)


def _with_http_address(settings: Settings, address: str) -> Settings:
    from dataclasses import replace

    from gateway_core.config import parse_settings

    parse_settings({"server": {"http_address": address}}, {})  # validates the address alone
    return replace(settings, http_address=address)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal capture: `_run` owns SIGINT/SIGTERM for both halves."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _event_loop_run(main: Coroutine[Any, Any, None]) -> None:
    """Runs main on uvloop when it is installed (less per-callback overhead), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


async def _run(settings: Settings, *, core: bool, facade_core_target: str | None, facade: bool = True) -> None:
    from gateway_core.server import start_core

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = await start_core(settings) if core else None
    http_server: _Uvicorn | None = None
    try:
        if running is not None:
            await _announce(settings, running)
        if facade:
            target = facade_core_target or _local_target(settings.grpc_address, running.port if running else 0)
            http_server = _facade_server(settings, target)
            serving = asyncio.create_task(http_server.serve())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            http_server.should_exit = True
            await serving
            stopping.cancel()
        else:
            await stop.wait()
    finally:
        if running is not None:
            await running.stop()


def _facade_server(settings: Settings, core_target: str) -> _Uvicorn:
    from http_facade.app import create_app

    host, port = _split(settings.http_address)
    config = uvicorn.Config(
        create_app(core_target),
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=30,
    )
    return _Uvicorn(config)


def _local_target(grpc_address: str, bound_port: int) -> str:
    host, port = _split(grpc_address)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"{host}:{bound_port or port}"


async def _announce(settings: Settings, running: object) -> None:
    from gateway_core.bootstrap import create_demo_account_if_empty
    from gateway_core.server import Core

    assert isinstance(running, Core)
    click.echo(f"Tollgate core: gRPC on {_local_target(settings.grpc_address, running.port)}")
    click.echo(f"OpenAI-compatible API: http://{settings.http_address}/v1")
    if settings.admin_token_generated:
        click.echo(
            "Admin token for this run (set TOLLGATE_ADMIN_TOKEN to choose your own):\n"
            f"  export TOLLGATE_ADMIN_TOKEN={settings.admin_token}"
        )
    if not settings.create_demo_account:
        return
    secret = await create_demo_account_if_empty(running.store, settings.key_pepper)
    if secret is None:
        return
    model = "mock-chat" if "mock-chat" in settings.models else next(iter(settings.models), "")
    click.echo(
        "\nCreated a demo account with $5.00 of credit. Its API key, shown only this once:\n"
        f"  {secret}\n\nTry it:\n"
        f"  curl http://{settings.http_address}/v1/chat/completions \\\n"
        f"    -H 'Authorization: Bearer {secret}' -H 'Content-Type: application/json' \\\n"
        f"    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n"
    )
