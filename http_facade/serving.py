"""The uvicorn configuration every facade runs with: the hardened protocol and the edge timeouts."""

from __future__ import annotations

from typing import Any

import uvicorn

from http_facade.edge_limits import EdgeLimits
from http_facade.edge_protocol import edge_http_protocol


def uvicorn_config(app: Any, limits: EdgeLimits, **options: Any) -> uvicorn.Config:
    """uvicorn.Config for app, enforcing limits' header/body deadlines, header size and keep-alive.

    options are passed on to uvicorn.Config (host, port, log_level, ...).
    """
    return uvicorn.Config(
        app,
        http=edge_http_protocol(limits),
        timeout_keep_alive=limits.keep_alive_seconds,  # type: ignore[arg-type]  # float works; the hint says int
        ws="none",  # no WebSocket routes: an Upgrade is an ordinary request, under the same deadlines
        # Per-request work nothing uses: the facade never reads the client's address or scheme
        # (X-Forwarded-* rewriting), and a `server: uvicorn` header only tells scanners what runs here.
        proxy_headers=False,
        server_header=False,
        **options,
    )
