"""Anthropic Messages upstream calls: URL, headers, the HTTP call. I/O only.

Conversion is translate's job; this module only moves bytes, bounds them
(response size, the caller's deadline) and turns transport failures into
ProviderErrors. No message it raises carries the operator's key or base URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway_core.config import ProviderSettings
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.anthropic import translate
from gateway_core.providers.anthropic.response import malformed
from gateway_core.providers.base import ProviderError, UpstreamCall
from gateway_core.providers.http import (
    MAX_ERROR_BODY_BYTES,
    Deadline,
    StreamEvents,
    call_timeout,
    drain,
    read_json,
    read_within,
    request_headers,
    send_json,
    user_agent,
)
from gateway_core.providers.http_client import UpstreamClient
from gateway_core.providers.http_response import ResponseHeaders, UpstreamResponse
from gateway_core.providers.sse import SseEvent, iter_sse

# How long to wait for the end of the body after message_stop before giving up on reusing the connection.
DRAIN_SECONDS = 0.5


class AnthropicProvider:
    """A configured Anthropic upstream. Safe to share; the HTTP client is injected."""

    def __init__(self, settings: ProviderSettings, http: UpstreamClient) -> None:
        self.name = settings.name
        self._settings = settings
        self._http = http
        self._url = settings.base_url.rstrip("/") + "/v1/messages"
        self._user_agent = user_agent()
        # The provider's own headers: its credential (when configured) and API version.
        self._auth = {"anthropic-version": settings.anthropic_version}
        if settings.api_key:
            self._auth["x-api-key"] = settings.api_key

    async def complete(self, call: UpstreamCall) -> chat_pb2.CreateChatCompletionResponse:
        """POSTs a non-streaming request and translates the whole answer."""
        body = translate.to_request(call, stream=False)
        deadline = Deadline.after(call.timeout_seconds)
        response = await self._send(call, body, deadline, stream=False)
        try:
            parsed = await read_json(response, deadline)
        finally:
            await response.aclose()
        return translate.from_response(parsed, call, provider=self.name)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        """POSTs a streaming request and yields chunks as they arrive.

        Closing or cancelling this iterator closes the upstream response, which
        is how Anthropic learns to stop generating.
        """
        body = translate.to_request(call, stream=True)
        deadline = Deadline.after(call.timeout_seconds)
        translator = translate.StreamTranslator(call, provider=self.name)
        async with contextlib.AsyncExitStack() as stack:
            response = await self._send(call, body, deadline, stream=True)
            stack.push_async_callback(response.aclose)
            if response.headers.get("content-type", "").startswith("application/json"):
                await _refuse_json_instead_of_stream(response, deadline)
            events = iter_sse(response)
            reader = stack.enter_context(StreamEvents(events, deadline))
            while (event := await reader.next()) is not None:
                for chunk in translator.feed(event.event, _event_json(event)):
                    yield chunk
                if translator.finished:
                    await drain(response, deadline, DRAIN_SECONDS)
                    break
            for chunk in translator.finish():
                yield chunk

    async def aclose(self) -> None:
        """Nothing of its own to release: the shared HTTP client is the server's."""

    async def _send(
        self, call: UpstreamCall, body: dict[str, Any], deadline: Deadline, *, stream: bool,
    ) -> UpstreamResponse:
        """Sends the request and returns the response with headers read (the caller closes it)."""
        return await send_json(
            self._http, url=self._url, body=orjson.dumps(body),
            headers=request_headers(call, stream=stream, user_agent=self._user_agent, auth=self._auth),
            timeout=call_timeout(self._settings, deadline), map_error=_map_error,
            secret=self._settings.api_key,
        )


async def _refuse_json_instead_of_stream(response: UpstreamResponse, deadline: Deadline) -> None:
    """A JSON body (status 200) where an event stream was asked for: raise its error."""
    raw = await read_within(response, deadline, MAX_ERROR_BODY_BYTES, truncate=True)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("type") == "error":
        raise translate.error_in_event(parsed.get("error"))
    raise malformed("a JSON body instead of an event stream")


def _event_json(event: SseEvent) -> Any:
    try:
        return orjson.loads(event.data)
    except orjson.JSONDecodeError:
        raise malformed("stream event data is not JSON") from None


def _map_error(status: int, raw: bytes, headers: ResponseHeaders) -> ProviderError:
    return translate.map_error(status, raw, headers.get("retry-after"))
