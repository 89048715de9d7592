"""Prometheus exposition: the payload both /metrics endpoints serve, and the core's own listener.

`tollgate serve` runs the facade, whose /metrics covers the whole process. A
core run alone (`tollgate core`) has no HTTP server, so [metrics] address gives
it a minimal one: GET /metrics only, optionally behind a bearer token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("tollgate.metrics")
# A scrape request is one short line and a few headers; anything longer is not Prometheus.
_MAX_HEAD_BYTES = 8192
_READ_TIMEOUT_SECONDS = 5.0


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def authorized(authorization: str | None, token: str) -> bool:
    """Whether a scrape may read metrics: always without a token, else only with `Bearer <token>`."""
    if not token:
        return True
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((authorization or "").encode(), expected)


class MetricsListener:
    """A plain HTTP/1.1 server answering GET /metrics; everything else 404 (or 401 without the token)."""

    def __init__(self, server: asyncio.Server, token: str) -> None:
        self._server = server
        self._token = token

    @property
    def port(self) -> int:
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @classmethod
    async def start(cls, address: str, token: str) -> MetricsListener:
        host, _, port = address.rpartition(":")
        listener = cls.__new__(cls)
        listener._token = token
        listener._server = await asyncio.start_server(listener._answer, host.strip("[]"), int(port))
        log.info("metrics on http://%s:%d/metrics", host, listener.port)
        return listener

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_SECONDS)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            writer.close()
            return
        status, body, content_type = self._respond(head[:_MAX_HEAD_BYTES].decode("latin-1"))
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode() + body
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _respond(self, head: str) -> tuple[str, bytes, str]:
        lines = head.split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method != "GET" or path != "/metrics":
            return "404 Not Found", b"not found\n", "text/plain"
        headers = {name.strip().lower(): value.strip() for name, _, value in (l.partition(":") for l in lines[1:] if l)}
        if not authorized(headers.get("authorization"), self._token):
            return "401 Unauthorized", b"unauthorized\n", "text/plain"
        body, content_type = exposition()
        return "200 OK", body, content_type
