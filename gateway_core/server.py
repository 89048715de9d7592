"""The core's composition root: build the grpc.aio server from settings, start it, stop it.

Everything with a lifetime (the database, the shared upstream HTTP client,
providers) is created here at start and closed at stop, never at import.
"""

from __future__ import annotations

import asyncio

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from admin.servicer import AdminServicer
from gateway_core.auth import Authenticator
from gateway_core.background import BackgroundTasks
from gateway_core.call_gate import CallGate, GatedServer
from gateway_core.chat.attempts import RouteAttempts
from gateway_core.chat.pipeline import ChatPipeline
from gateway_core.chat.servicer import ChatServicer
from gateway_core.config import Settings
from gateway_core.limits.build import build_enforcer
from gateway_core.limits.enforcer import LimitEnforcer
from gateway_core.in_process import InProcessServices
from gateway_core.metering.ledger import Ledger
from gateway_core.metering.reconciler import Reconciler
from gateway_core.metering.servicer import MeteringServicer
from gateway_core.observability import redaction, tracing
from gateway_core.observability.metrics_http import MetricsListener
from gateway_core.observability.observed_provider import observe_providers
from gateway_core.pb.gateway.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway_core.pb.gateway.v1 import chat_pb2, chat_pb2_grpc, metering_pb2, metering_pb2_grpc
from gateway_core.providers.base import Provider
from gateway_core.providers.http import make_http_client
from gateway_core.providers.http_client import UpstreamClient
from gateway_core.providers.registry import build_providers
from gateway_core.routing import Router
from gateway_core.store import Store, open_store
from gateway_core.store.leader import LeaderLock

log = logging.getLogger("tollgate.core")

# Once no call runs, the server's own stop still gets this long for a call the gate is refusing.
_REFUSING_GRACE_SECONDS = 1.0

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
    http: UpstreamClient
    reconciler: Reconciler
    background: BackgroundTasks
    providers: dict[str, Provider] = field(default_factory=dict)
    metrics_listener: MetricsListener | None = None
    # The SDK TracerProvider this core built from [tracing] (flushed and shut down at stop), if any.
    tracer_provider: Any = None
    limits: LimitEnforcer | None = None
    # The same services, callable without a socket (the facade in `tollgate serve`).
    local: InProcessServices = field(default_factory=InProcessServices)
    # Refuses new gRPC calls (UNAVAILABLE) and counts running ones while the core drains.
    gate: CallGate = field(default_factory=CallGate)

    async def stop(self, grace_seconds: float | None = 5.0, *, settle_seconds: float | None = None) -> None:
        """Turns health NOT_SERVING, lets in-flight calls finish (up to grace), lets
        drains and settlements of abandoned requests land (up to settle_seconds,
        default max(grace, 10)), gives up the hold lease, closes everything."""
        await self.health.enter_graceful_shutdown()
        # Calls from an in-process facade (`serve`) finish under the same grace as gRPC ones.
        await asyncio.gather(self.stop_calls(grace_seconds), self.local.stop(grace_seconds))
        if settle_seconds is None:
            settle_seconds = max(grace_seconds or 0.0, 10.0)
        await self.background.wait(timeout_seconds=settle_seconds)
        await self.reconciler.retire()
        for provider in self.providers.values():
            await provider.aclose()
        await self.http.aclose()
        if self.limits is not None:
            await self.limits.close()
        await self.store.close()
        if self.metrics_listener is not None:
            await self.metrics_listener.stop()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()

    async def stop_calls(self, grace_seconds: float | None) -> None:
        """Refuses new gRPC calls (UNAVAILABLE, see call_gate), lets running ones finish for up
        to grace_seconds (None: no limit), then stops the server, cancelling what still runs."""
        self.gate.close()
        try:
            await asyncio.wait_for(self.gate.wait_idle(), timeout=grace_seconds)
        except TimeoutError:
            await self.server.stop(0)
            return
        # Nothing counted runs any more; a call arriving now is refused by the gate at once.
        await self.server.stop(_REFUSING_GRACE_SECONDS)


async def start_core(
    settings: Settings, *, address: str | None = None, tracer_provider: Any = None,
    metrics_address: str | None = None,
) -> Core:
    """Opens the store (running migrations), builds the services and starts serving.

    `address` overrides settings.grpc_address (port 0 picks a free port);
    `metrics_address` overrides [metrics] address. `tracer_provider` (an
    OpenTelemetry SDK TracerProvider, owned by the caller) overrides [tracing].
    """
    # Configured secrets have no recognizable shape: mask them by value in every log line.
    redaction.protect([p.api_key for p in settings.providers.values()] + [settings.admin_token, settings.key_pepper])
    owned_tracer_provider = None
    if tracer_provider is None:
        tracer_provider = owned_tracer_provider = tracing.build_tracer_provider(settings.observability.tracing)
    tracer = tracing.tracer_of(tracer_provider)
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
    listener: MetricsListener | None = None
    try:
        await reconciler.start()
        providers = build_providers(settings.providers, http)
        upstreams = observe_providers(providers, tracer, {
            n: tracing.genai_provider_name(p.type, p.vendor) for n, p in settings.providers.items()
        })
        authenticator = Authenticator(store, settings.key_pepper, settings.key_cache_seconds)
        router = Router(settings.models)
        limits = build_enforcer(settings.limits, store, settings.key_cache_seconds)
        pipeline = ChatPipeline(
            authenticator=authenticator,
            router=router,
            providers=upstreams,
            ledger=ledger,
            metering=settings.metering,
            background=background,
            attempts=RouteAttempts(settings.routing, upstreams, settings.providers),
            limits=limits,
        )
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        gate = CallGate()
        # Registers on the server (gated) and keeps the handlers for in-process calls.
        services = InProcessServices(GatedServer(server, gate))
        chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(
            pipeline, authenticator, router, tracer=tracer, known_models=frozenset(settings.models)
        ), services)
        metering_pb2_grpc.add_MeteringServiceServicer_to_server(MeteringServicer(store, authenticator), services)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(store, settings.admin_token, settings.key_pepper, models=settings.models), services
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        port = server.add_insecure_port(address or settings.grpc_address)
        metrics_at = settings.observability.metrics.address if metrics_address is None else metrics_address
        # Before the gRPC server starts, so a taken metrics port leaves nothing serving.
        listener = await MetricsListener.start(metrics_at, settings.observability.metrics.token) if metrics_at else None
        await server.start()
    except BaseException:
        if listener is not None:
            await listener.stop()
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
        metrics_listener=listener,
        tracer_provider=owned_tracer_provider,
        limits=limits,
        local=services,
        gate=gate,
    )
