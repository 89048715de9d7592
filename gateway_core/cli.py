"""The `tollgate` command: serve (core + facade), core, facade, migrate, admin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import uvicorn

from gateway_core.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from gateway_core.in_process import InProcessChannel
    from http_facade.drain import Drain

log = logging.getLogger("tollgate")

_CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TOLLGATE_CONFIG",
    help="TOML configuration file (env TOLLGATE_CONFIG). Without one, embedded defaults are used.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]),
    help="Overrides [logging] level and TOLLGATE_LOG_LEVEL.",
)
def main(log_level: str | None) -> None:
    """Tollgate: one OpenAI-compatible endpoint and key for every AI model.

    \b
    Examples:
      tollgate serve                      # everything, on embedded defaults
      tollgate serve --config tollgate.toml
      tollgate core --config tollgate.toml
      tollgate facade --core 127.0.0.1:50051
      tollgate admin accounts list
    """
    from gateway_core.observability.log_format import LEVEL_ENV, configure_logging
    from gateway_core.observability.settings import LoggingSettings

    if log_level:
        os.environ[LEVEL_ENV] = log_level  # the flag is the env override, so it wins over [logging] too
    # Until a command loads its settings: text, redacted (alembic/httpx chatter kept at WARNING).
    configure_logging(LoggingSettings(level=log_level or "info", format="text"))


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
    from gateway_core.lifecycle import FacadeStartFailed, ShutdownSignals, run_until_signalled
    from gateway_core.server import start_core
    from http_facade.drain import Drain

    from gateway_core.observability.log_format import configure_logging, effective_settings
    from gateway_core.observability.tracing import build_tracer_provider

    configure_logging(effective_settings(settings.observability.logging, os.environ))
    signals = ShutdownSignals()
    signals.install()
    # One TracerProvider for the process: under `serve`, facade and core spans share it.
    tracer_provider = build_tracer_provider(settings.observability.tracing)
    running = await start_core(settings, tracer_provider=tracer_provider) if core else None
    try:
        if running is not None:
            await _announce(settings, running)
        front: tuple[Drain, _Uvicorn] | None = None
        if facade:
            # Next to the core, the facade calls it in-process: no loopback gRPC hop.
            target = running.local.channel() if running is not None else facade_core_target
            assert target is not None
            drain = Drain()
            front = (drain, _facade_server(settings, target, drain, tracer_provider))
    except BaseException:
        if running is not None:
            await running.stop()
        if tracer_provider is not None:
            tracer_provider.shutdown()
        raise
    # Everything start-up built lives as long as the process: keep the collector off it.
    from gateway_core.runtime import settle_heap_after_start

    settle_heap_after_start()
    try:
        await run_until_signalled(
            signals,
            core=running,
            facade=front,
            grace_seconds=settings.shutdown_grace_seconds,
            drain_seconds=settings.metering.drain_seconds,
        )
    except FacadeStartFailed as failed:
        click.echo(f"error: {failed}", err=True)
        raise SystemExit(failed.code) from None
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # flushes the last spans


def _facade_server(
    settings: Settings, core_target: str | InProcessChannel, drain: Drain, tracer_provider: Any = None
) -> _Uvicorn:
    from dataclasses import asdict

    from gateway_core.lifecycle import FACADE_CLOSE_SECONDS
    from http_facade.app import create_app
    from http_facade.edge_limits import EdgeLimits
    from http_facade.serving import uvicorn_config

    host, port = _split(settings.http_address)
    limits = EdgeLimits(**asdict(settings.http))
    app = create_app(
        core_target,
        limits=limits,
        drain=drain,
        metrics_token=settings.observability.metrics.token,
        tracer_provider=tracer_provider,
    )
    config = uvicorn_config(  # the hardened protocol: header/body deadlines, header size limit
        app,
        limits,
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        lifespan="on",
        # A backstop only: the drain has already let requests finish or cut them.
        timeout_graceful_shutdown=FACADE_CLOSE_SECONDS,
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
