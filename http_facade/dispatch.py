"""The facade's outermost ASGI app: the hot routes straight to their endpoints, the rest to FastAPI.

POST /v1/chat/completions and GET /v1/models go through the same
EdgeMiddleware as every request (request id, drain, observe; the same Drain and
tracer as the FastAPI app's) and then straight to hot_routes, skipping
FastAPI's per-request machinery. Everything else (other paths, other methods
on these paths, lifespan) is the FastAPI app's, which also mounts the hot
endpoints, so a wrong method still gets its 405 and a path its 404.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HotRouteDispatch:
    """Sends (method, path) pairs in `hot` to their edge-wrapped endpoints, everything else to `app`."""

    def __init__(self, app: ASGIApp, hot: dict[tuple[str, str], ASGIApp]) -> None:
        self.app = app
        self._hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self._hot.get((scope["method"], scope["path"]))
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)
