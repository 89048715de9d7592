"""OpenAI-compatible upstream calls: URL, headers, the HTTP call. I/O only.

Conversion is translate's job; this module only moves bytes, bounds them
(response size, the caller's deadline) and turns transport failures into
ProviderErrors. No message it raises carries the operator's key or base URL.
Upstream headers are built from scratch: of the client's, only W3C trace
context passes, and only when well formed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway_core.config import ProviderSettings
from gateway_core.errors import Reason
from gateway_core.pb.gateway.v1 import chat_pb2
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
from gateway_core.providers.openai import translate
from gateway_core.providers.openai.response import malformed
from gateway_core.providers.sse import SseEvent, iter_sse

# How long to wait for the end of the body after [DONE] before giving up on reusing the connection.
DRAIN_SECONDS = 0.5
log = logging.getLogger("tollgate.providers.openai")


class OpenAIProvider:
    """A configured OpenAI-compatible upstream. Safe to share; the HTTP client is injected."""

    def __init__(self, settings: ProviderSettings, http: UpstreamClient) -> None:
        self.name = settings.name
        self._settings = settings
        self._http = http
        self._url = settings.base_url.rstrip("/") + "/chat/completions"
        self._user_agent = user_agent()
        # The provider's credential header, when one is configured.
        self._auth = {"authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self._dialect = translate.dialect_for(settings)

    async def complete(self, call: UpstreamCall) -> chat_pb2.CreateChatCompletionResponse:
        """POSTs a non-streaming request and translates the whole answer."""
        body = self._body(call, stream=False)
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
        is how the upstream learns to stop generating.
        """
        body = self._body(call, stream=True)
        deadline = Deadline.after(call.timeout_seconds)
        translator = translate.StreamTranslator(call, provider=self.name)
        async with contextlib.AsyncExitStack() as stack:
            response = await self._send(call, body, deadline, stream=True)
            stack.push_async_callback(response.aclose)
            if response.headers.get("content-type", "").startswith("application/json"):
                await _refuse_json_instead_of_stream(response, deadline)
            events = iter_sse(response)
            reader = stack.enter_context(StreamEvents(events, deadline))
            done = False
            while (event := await reader.next()) is not None:
                data = event.data
                if data[:1] != "{" and data.strip() == "[DONE]":  # a JSON chunk is never the end marker
                    done = True
                    break
                for chunk in translator.feed(_event_json(event)):
                    yield chunk
            if not done and not translator.finished:
                raise ProviderError(Reason.UPSTREAM_ERROR, "upstream stream ended early")
            for chunk in translator.finish():
                yield chunk
            if done:
                await drain(events, response, deadline, DRAIN_SECONDS)

    async def aclose(self) -> None:
        """Nothing of its own to release: the shared HTTP client is the server's."""

    def _body(self, call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
        """The request body in this upstream's dialect; dropped parameters are logged by name only."""
        prepared = translate.prepare_request(call, stream=stream, dialect=self._dialect)
        if prepared.dropped:
            log.debug("provider %s: dropped unsupported parameters %s for request %s",
                      self.name, ",".join(prepared.dropped), call.request_id)
        return prepared.body

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
    """Some vendors answer a stream request with a plain JSON error (status 200): raise it."""
    raw = await read_within(response, deadline, MAX_ERROR_BODY_BYTES, truncate=True)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("error"):
        raise translate.error_in_body(parsed["error"])
    raise malformed("a JSON body instead of an event stream")


def _event_json(event: SseEvent) -> Any:
    try:
        data = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        raise malformed("stream event data is not JSON") from None
    if event.event == "error":
        raise translate.error_in_body(data.get("error", data) if isinstance(data, dict) else data)
    return data


def _map_error(status: int, raw: bytes, headers: ResponseHeaders) -> ProviderError:
    return translate.map_error(status, raw, headers.get("retry-after"), retry_after_ms=headers.get("retry-after-ms"))
