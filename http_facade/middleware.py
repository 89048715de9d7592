"""Request ids: one per HTTP request, sent to the core and returned on every response.

A pure ASGI middleware (BaseHTTPMiddleware buffers and breaks streaming). The
id is always generated here, never taken from the client: the core uses it as
the idempotency key of the request's charge, so a client-chosen id could
collide with another request's.
"""

from __future__ import annotations

import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_facade.errors import ApiError

REQUEST_ID_HEADER = b"x-request-id"
# Where routes find the id; a private scope key rather than lifespan state,
# which servers may share between requests.
REQUEST_ID_SCOPE_KEY = "tollgate.request_id"


def new_request_id() -> str:
    """A fresh request id: "req_" and 32 hex digits (128 random bits)."""
    # os.urandom directly: uuid4() draws the same bytes, then builds a UUID object around them.
    return "req_" + os.urandom(16).hex()


def request_id_of(scope: Scope) -> str:
    """The id RequestIdMiddleware gave this request."""
    request_id: str = scope[REQUEST_ID_SCOPE_KEY]
    return request_id


class RequestIdMiddleware:
    """Gives each HTTP request an id and puts it in the x-request-id response header.

    It also turns an exception that escaped the app before the response started
    into an OpenAI-shaped 500 carrying the id, then re-raises it so the server
    logs it; Starlette's own 500 is produced outside this middleware and would
    have neither.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if not started:
                error = ApiError(
                    500,
                    "The server had an error while processing your request.",
                    type="server_error",
                )
                await error.to_response()(scope, receive, send_with_id)
            raise
