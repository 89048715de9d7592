"""The core's composition root: build the grpc.aio server from settings, start it, stop it.

Everything with a lifetime (the database, the shared upstream HTTP client,
providers) is created here at start and closed at stop, never at import.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from admin.servicer import AdminServicer
from gateway_core.auth import Authenticator
from gateway_core.background import BackgroundTasks
from gateway_core.chat.pipeline import ChatPipeline
from gateway_core.chat.servicer import ChatServicer
from gateway_core.config import Settings
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.reconciler import Reconciler
from gateway_core.metering.servicer import MeteringServicer
from gateway_core.pb.gateway.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc, metering_pb2, metering_pb2_grpc
from gateway_core.providers.base import Provider
from gateway_core.providers.http import make_http_client
from gateway_core.providers.registry import build_providers
from gateway_core.routing import Router
from gateway_core.store import Store, open_store
from gateway_core.store.leader import LeaderLock

log = logging.getLogger("tollgate.core")

SERVICE_NAMES = (
    chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name,
    metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
# Generous: chat requests carry whole conversations and inline images.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class Core:
    """A running core: its server, bound port and everything to close at stop."""

    server: grpc.aio.Server
    port: int
    store: Store
    health: health.aio.HealthServicer
    http: httpx.AsyncClient
    reconciler: Reconciler
    background: BackgroundTasks
    providers: dict[str, Provider] = field(default_factory=dict)

    async def stop(self, grace_seconds: float | None = 5.0) -> None:
        """Turns health NOT_SERVING, lets in-flight calls finish (up to grace), lets
        drains and settlements of abandoned requests land, closes everything."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)
        await self.background.wait(timeout_seconds=max(grace_seconds or 0.0, 10.0))
        await self.reconciler.stop()
        for provider in self.providers.values():
            await provider.aclose()
        await self.http.aclose()
        await self.store.close()


async def start_core(settings: Settings, *, address: str | None = None) -> Core:
    """Opens the store (running migrations), builds the services and starts serving.

    `address` overrides settings.grpc_address (port 0 picks a free port).
    """
    database = settings.database
    store = await open_store(
        settings.database_url,
        workers=database.pool_size,
        migrate=database.migrate_on_start,
        max_overflow=database.max_overflow,
        pool_timeout_seconds=database.pool_timeout_seconds,
    )
    http = make_http_client()
    # A fresh id per process: holds are leased to it, and released by any live core once it dies.
    ledger = Ledger(store.db, instance_id="core_" + secrets.token_hex(8))
    reconciler = Reconciler(
        ledger,
        interval_seconds=settings.metering.reconcile_interval_seconds,
        stale_after_seconds=settings.metering.orphan_after_seconds,
        leader=LeaderLock(store.db.engine),  # one replica sweeps orphans (PostgreSQL)
    )
    background = BackgroundTasks()
    try:
        await reconciler.start()
        providers = build_providers(settings.providers, http)
        authenticator = Authenticator(store, settings.key_pepper, settings.key_cache_seconds)
        router = Router(settings.models)
        pipeline = ChatPipeline(
            authenticator=authenticator,
            router=router,
            providers=providers,
            ledger=ledger,
            metering=settings.metering,
            background=background,
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(pipeline, authenticator, router), server)
        metering_pb2_grpc.add_MeteringServiceServicer_to_server(MeteringServicer(store, authenticator), server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(store, settings.admin_token, settings.key_pepper), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        port = server.add_insecure_port(address or settings.grpc_address)
        await server.start()
    except BaseException:
        await reconciler.stop()
        await http.aclose()
        await store.close()
        raise
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("core listening on port %d", port)
    return Core(
        server=server,
        port=port,
        store=store,
        health=health_servicer,
        http=http,
        reconciler=reconciler,
        background=background,
        providers=providers,
    )
