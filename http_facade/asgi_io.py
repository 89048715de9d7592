"""Plain-ASGI request reading and response writing for the facade's hot routes.

The same bytes Starlette's Request and Response would read and write (same
header order, same content-length/content-type rules), without building those
objects: on the chat path they cost more than the rest of the facade's work.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Message, Receive, Scope, Send

from http_facade.disconnect import ClientDisconnected
from http_facade.errors import ApiError

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
# The client headers the chat path reads; the rest are never decoded.
_WANTED = frozenset({b"content-length", b"authorization", b"traceparent", b"tracestate"})


def wanted_headers(scope: Scope) -> dict[bytes, str]:
    """The first value of each header the hot routes read, decoded as Starlette does (latin-1)."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED and name not in found:
            found[name] = value.decode("latin-1")
    return found


async def read_body(receive: Receive, declared_length: str | None, limit: int) -> bytes:
    """The whole request body, or a 413 as soon as it is known to exceed limit bytes.

    Counts while reading, so a chunked body without Content-Length is cut off
    too, before it is buffered in full; a disconnect raises ClientDisconnected.
    """
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise ClientDisconnected()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def too_large(limit: int) -> ApiError:
    """The 413 for a body over limit bytes."""
    # Closing the connection spares the client from uploading the rest.
    return ApiError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
        headers={"connection": "close"},
    )


def raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Header pairs as Starlette encodes them: names lower-cased, latin-1."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def send_body(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                    content_type: tuple[bytes, bytes] | None = JSON_CONTENT_TYPE) -> None:
    """A whole response: headers then content-length and content-type (Starlette's order), then body."""
    headers.append((b"content-length", str(len(body)).encode()))
    if content_type is not None:
        headers.append(content_type)
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, error: ApiError) -> None:
    """error's complete response, as ApiError.to_response() would send it."""
    await send_body(send, error.status, error.body(), raw_headers(error.headers) if error.headers else [])
