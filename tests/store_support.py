"""Test helpers for the store, auth and admin suites: real SQLite, real gRPC servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from admin.servicer import AdminServicer
from gateway_core.auth import Authenticator
from gateway_core.metering.servicer import MeteringServicer
from gateway_core.pb.gateway.admin.v1 import admin_pb2_grpc
from gateway_core.pb.gateway.v1 import metering_pb2_grpc
from gateway_core.store import Database, Store

ADMIN_TOKEN = "test-admin-token-0123456789"
PEPPER = "test-pepper"


def sqlite_url(tmp_path: Path, name: str = "tollgate.db") -> str:
    """A SQLite URL for a fresh file under tmp_path."""
    return f"sqlite:///{tmp_path / name}"


def admin_metadata(token: str = ADMIN_TOKEN) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a bearer token."""
    return (("authorization", f"Bearer {token}"),)


@dataclass
class RunningServer:
    """A started grpc.aio server with Admin and Metering services over a real store."""

    address: str
    store: Store
    authenticator: Authenticator


@asynccontextmanager
async def running_server(
    tmp_path: Path, admin_token: str = ADMIN_TOKEN, pepper: str = PEPPER
) -> AsyncIterator[RunningServer]:
    """Serves AdminService and MeteringService on 127.0.0.1:<free port> on this event loop."""
    db = await Database.open(sqlite_url(tmp_path))
    store = Store(db)
    authenticator = Authenticator(store, pepper, cache_seconds=2.0)
    server = grpc.aio.server()
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(store, admin_token, pepper), server)
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(MeteringServicer(store, authenticator), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield RunningServer(f"127.0.0.1:{port}", store, authenticator)
    finally:
        await server.stop(None)
        await db.close()


@contextmanager
def server_in_thread(tmp_path: Path, admin_token: str = ADMIN_TOKEN) -> Iterator[str]:
    """Runs running_server() on its own event loop in a background thread; yields its address.

    For blocking clients (the click CLI) that cannot share the test's loop.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Event | None = None
    address: list[str] = []
    failure: list[BaseException] = []

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            async with running_server(tmp_path, admin_token) as server:
                address.append(server.address)
                ready.set()
                await stop.wait()
        except BaseException as exc:  # reported in the test thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), name="test-grpc-server")
    thread.start()
    try:
        ready.wait(timeout=30)
        if failure or not address:
            raise RuntimeError("test server did not start") from (failure[0] if failure else None)
        yield address[0]
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
