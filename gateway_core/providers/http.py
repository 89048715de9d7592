"""The one pooled HTTP client every provider shares, and per-call timeouts.

The server creates the client at start and closes it at stop; nothing here
runs at import time. Per-call limits come from the provider's settings and the
caller's gRPC deadline (`UpstreamCall.timeout_seconds`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from importlib import metadata

import httpx

from gateway_core.config import ProviderSettings

# Connections kept per process. Streams hold a connection for their whole
# life, so the ceiling is generous; idle ones are dropped before typical
# upstream load balancers (60 s and more) would drop them under us.
MAX_CONNECTIONS = 1000
MAX_KEEPALIVE_CONNECTIONS = 200
KEEPALIVE_EXPIRY_SECONDS = 30.0
# Waiting for a free pooled connection, and sending the request body.
POOL_TIMEOUT_SECONDS = 10.0
WRITE_TIMEOUT_SECONDS = 60.0


def make_http_client() -> httpx.AsyncClient:
    """The shared upstream client: pooled HTTP/1.1, never follows redirects,
    ignores proxy and .netrc settings from the environment."""
    return httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=MAX_CONNECTIONS,
            max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
        ),
        # Every call passes its own; this only guards a call that forgets to.
        timeout=httpx.Timeout(600.0, connect=10.0, pool=POOL_TIMEOUT_SECONDS),
        # A redirect could send the operator's key to another host (or an
        # internal one): an upstream 3xx is an error, not an instruction.
        follow_redirects=False,
        # Environment proxies and .netrc could inject credentials or route
        # upstream traffic somewhere the operator did not configure.
        trust_env=False,
        http1=True,
        http2=False,
    )


def user_agent() -> str:
    """`tollgate/<version>` for upstream requests."""
    try:
        version = metadata.version("tollgate")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"tollgate/{version}"


@dataclass(frozen=True)
class Deadline:
    """When one upstream call must be over, on the monotonic clock (None: never)."""

    at: float | None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """The deadline `seconds` from now; None for a caller without a deadline."""
        return cls(None if seconds is None else time.monotonic() + max(seconds, 0.0))

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a deadline."""
        return None if self.at is None else max(self.at - time.monotonic(), 0.0)

    def loop_time(self) -> float | None:
        """The deadline on the running event loop's clock, for asyncio.timeout_at."""
        remaining = self.remaining()
        return None if remaining is None else asyncio.get_running_loop().time() + remaining


def call_timeout(settings: ProviderSettings, deadline: Deadline) -> httpx.Timeout:
    """httpx timeouts for one call: the configured ones, capped by the deadline.

    `read` is the longest silence between two received bytes; the total is
    enforced separately by the caller against `deadline`.
    """
    remaining = deadline.remaining()

    def cap(seconds: float) -> float:
        return seconds if remaining is None else min(seconds, remaining)

    return httpx.Timeout(
        connect=cap(settings.connect_timeout_seconds),
        read=cap(settings.read_timeout_seconds),
        write=cap(WRITE_TIMEOUT_SECONDS),
        pool=cap(POOL_TIMEOUT_SECONDS),
    )
