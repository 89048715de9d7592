"""Gemini API calls: URL, headers, the HTTP call. I/O only.

    POST {base_url}/models/{model}:generateContent
    POST {base_url}/models/{model}:streamGenerateContent?alt=sse

The key goes in the x-goog-api-key header, never in the `?key=` query
parameter Google also accepts: URLs end up in logs, proxies and exception
messages. Conversion is translate's job; this module only moves bytes, bounds
them (response size, the caller's deadline) and turns transport failures into
ProviderErrors. No message it raises carries the operator's key or base URL.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway_core.config import ProviderSettings
from gateway_core.errors import Reason
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import ProviderError, UpstreamCall
from gateway_core.providers.gemini import translate
from gateway_core.providers.http import (
    MAX_ERROR_BODY_BYTES,
    Deadline,
    StreamEvents,
    call_timeout,
    read_json,
    read_within,
    request_headers,
    send_json,
    user_agent,
)
from gateway_core.providers.http_client import UpstreamClient
from gateway_core.providers.http_response import ResponseHeaders, UpstreamResponse
from gateway_core.providers.sse import SseEvent, iter_sse

# "gemini-2.5-flash", "models/gemini-2.5-flash" or "tunedModels/my-model": one
# path segment each, so an odd model id can never reach another endpoint.
_MODEL = re.compile(r"(?:(models|tunedModels)/)?([A-Za-z0-9][A-Za-z0-9._-]{0,127})")
class GeminiProvider:
    """A configured Gemini API upstream. Safe to share; the HTTP client is injected."""

    def __init__(self, settings: ProviderSettings, http: UpstreamClient) -> None:
        self.name = settings.name
        self._settings = settings
        self._http = http
        self._base_url = settings.base_url.rstrip("/")
        self._user_agent = user_agent()
        # The provider's credential header, when one is configured.
        self._auth = {"x-goog-api-key": settings.api_key} if settings.api_key else {}

    async def complete(self, call: UpstreamCall) -> chat_pb2.CreateChatCompletionResponse:
        """POSTs generateContent and translates the whole answer."""
        body = translate.to_request(call)
        deadline = Deadline.after(call.timeout_seconds)
        response = await self._send(call, body, deadline, stream=False)
        try:
            parsed = await read_json(response, deadline)
        finally:
            await response.aclose()
        return translate.from_response(parsed, call, provider=self.name)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        """POSTs streamGenerateContent and yields chunks as they arrive.

        Closing or cancelling this iterator closes the upstream response, which
        is how Gemini learns to stop generating. A body that ends before every
        choice finished is an error, raised after the chunks already yielded.
        """
        body = translate.to_request(call)
        deadline = Deadline.after(call.timeout_seconds)
        translator = translate.StreamTranslator(call, provider=self.name)
        async with contextlib.AsyncExitStack() as stack:
            response = await self._send(call, body, deadline, stream=True)
            stack.push_async_callback(response.aclose)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                await _refuse_non_stream(response, deadline)
            events = iter_sse(response)
            reader = stack.enter_context(StreamEvents(events, deadline))
            while (event := await reader.next()) is not None:
                for chunk in translator.feed(_event_json(event)):
                    yield chunk
            if not translator.finished:
                raise ProviderError(Reason.UPSTREAM_ERROR, "upstream stream ended early")
            for chunk in translator.finish():
                yield chunk

    async def aclose(self) -> None:
        """Nothing of its own to release: the shared HTTP client is the server's."""

    def _url(self, call: UpstreamCall, *, stream: bool) -> str:
        match = _MODEL.fullmatch(call.upstream_model)
        if match is None:
            raise ProviderError(Reason.UPSTREAM_ERROR, "the route's upstream model id is not a Gemini model name",
                                upstream_body=f"model={call.upstream_model[:128]!r}")
        resource = f"{match.group(1) or 'models'}/{match.group(2)}"
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{self._base_url}/{resource}:{method}"

    async def _send(
        self, call: UpstreamCall, body: dict[str, Any], deadline: Deadline, *, stream: bool,
    ) -> UpstreamResponse:
        """Sends the request and returns the response with headers read (the caller closes it)."""
        return await send_json(
            self._http, url=self._url(call, stream=stream), body=orjson.dumps(body),
            headers=request_headers(call, stream=stream, user_agent=self._user_agent, auth=self._auth),
            timeout=call_timeout(self._settings, deadline), map_error=_map_error,
            secret=self._settings.api_key,
        )


async def _refuse_non_stream(response: UpstreamResponse, deadline: Deadline) -> None:
    """A 200 that is not an event stream (an error object, or a JSON array without alt=sse): raise."""
    raw = await read_within(response, deadline, MAX_ERROR_BODY_BYTES, truncate=True)
    error = translate.error_object(raw)
    if error:
        raise translate.error_in_body(error)
    raise translate.malformed("a JSON body instead of an event stream")


def _event_json(event: SseEvent) -> Any:
    try:
        return orjson.loads(event.data)
    except orjson.JSONDecodeError:
        raise translate.malformed("stream event data is not JSON") from None


def _map_error(status: int, raw: bytes, headers: ResponseHeaders) -> ProviderError:
    return translate.map_error(status, raw, headers.get("retry-after"))
