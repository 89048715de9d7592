"""A whole Tollgate (core + facade) running in a background thread, for end-to-end tests.

The gateway gets its own event loop in its own thread, so sync clients (the
official openai SDK, click's CliRunner) and async tests can both talk to it
over real sockets, exactly as users do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import uvicorn

from gateway_core.config import Settings, parse_settings
from gateway_core.pb.gateway.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway_core.server import Core, start_core
from http_facade.app import create_app
from http_facade.edge_limits import EdgeLimits
from http_facade.serving import uvicorn_config

ADMIN_TOKEN = "test-admin-token-0123456789"
# How the facade reaches the core; e2e modules that must behave the same both ways run under each.
TRANSPORTS = ("grpc", "in_process")


def settings_for(tmp_path: Path, *, providers: list[dict[str, Any]] | None = None,
                 models: list[dict[str, Any]] | None = None, **extra: Any) -> Settings:
    """Settings on a SQLite file in tmp_path with the mock provider plus what the test adds."""
    raw: dict[str, Any] = {
        "database": {"url": f"sqlite:///{tmp_path / 'tollgate.db'}"},
        "admin": {"token": ADMIN_TOKEN},
        "keys": {"pepper": "test-pepper"},
        "providers": [{"name": "mock", "type": "mock"}, *(providers or [])],
        "models": [
            {"name": "mock-chat", "routes": [{"provider": "mock", "model": "chat"}], "input_price": 0.1, "output_price": 0.4},
            {"name": "mock-echo", "routes": [{"provider": "mock", "model": "echo"}], "input_price": 0.1, "output_price": 0.4},
            *(models or []),
        ],
        **extra,
    }
    return parse_settings(raw, {})


@dataclass
class RunningGateway:
    """Addresses of a running gateway, and admin helpers over its gRPC API."""

    grpc_target: str
    http_url: str
    core: Core

    def admin(self) -> tuple[admin_pb2_grpc.AdminServiceStub, grpc.Channel]:
        channel = grpc.insecure_channel(self.grpc_target)
        return admin_pb2_grpc.AdminServiceStub(channel), channel

    def create_key(self, balance_micros: int = 10_000_000, **key_fields: Any) -> tuple[str, str, str]:
        """A new account with balance_micros ($10 by default) and a key: (account_id, key_id, secret)."""
        stub, channel = self.admin()
        meta = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
        with channel:
            account = stub.CreateAccount(admin_pb2.CreateAccountRequest(display_name="e2e"), metadata=meta).account
            if balance_micros:
                stub.TopUpAccount(
                    admin_pb2.TopUpAccountRequest(
                        account_id=account.id, amount_micros=balance_micros, request_id=f"seed-{account.id}"
                    ),
                    metadata=meta,
                )
            created = stub.CreateApiKey(
                admin_pb2.CreateApiKeyRequest(account_id=account.id, display_name="e2e", **key_fields), metadata=meta
            )
        return account.id, created.api_key.id, created.secret

    def account(self, account_id: str) -> admin_pb2.Account:
        stub, channel = self.admin()
        with channel:
            return stub.GetAccount(admin_pb2.GetAccountRequest(account_id=account_id),
                                   metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),)).account

    def ledger(self, account_id: str) -> list[admin_pb2.LedgerEntry]:
        stub, channel = self.admin()
        entries: list[admin_pb2.LedgerEntry] = []
        token = ""
        with channel:
            while True:
                page = stub.ListLedgerEntries(
                    admin_pb2.ListLedgerEntriesRequest(account_id=account_id, page_size=1000, page_token=token),
                    metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
                )
                entries.extend(page.entries)
                if not (token := page.next_page_token):
                    return entries

    def revoke_key(self, key_id: str) -> None:
        stub, channel = self.admin()
        with channel:
            stub.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(api_key_id=key_id),
                              metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))


class _QuietUvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # not the main thread's business
        yield


@contextlib.contextmanager
def running_gateway(
    settings: Settings,
    facade_options: Mapping[str, Any] | None = None,
    *,
    tracer_provider: Any = None,
    in_process: bool = False,
) -> Iterator[RunningGateway]:
    """Starts core + facade on free ports in a background thread; stops them on exit.

    tracer_provider (an OpenTelemetry SDK TracerProvider) is shared by both, as under `tollgate serve`.
    The facade calls the core over loopback gRPC (as `tollgate facade` does), or
    with in_process=True through the core's in-process channel (as `tollgate serve`
    does); the core listens on gRPC either way.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway", daemon=True)
    thread.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    http_port = sock.getsockname()[1]

    async def start() -> tuple[Core, _QuietUvicorn, asyncio.Task[None]]:
        core = await start_core(settings, address="127.0.0.1:0", tracer_provider=tracer_provider)
        target = core.local.channel() if in_process else f"127.0.0.1:{core.port}"
        limits = EdgeLimits(**asdict(settings.http))
        app = create_app(target, **{"limits": limits, "tracer_provider": tracer_provider, **dict(facade_options or {})})
        server = _QuietUvicorn(uvicorn_config(app, limits, log_level="warning", lifespan="on", access_log=False))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        return core, server, task

    core, server, task = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)

    async def stop() -> None:
        server.should_exit = True
        await task
        await core.stop(grace_seconds=1)

    try:
        yield RunningGateway(grpc_target=f"127.0.0.1:{core.port}", http_url=f"http://127.0.0.1:{http_port}", core=core)
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        sock.close()
