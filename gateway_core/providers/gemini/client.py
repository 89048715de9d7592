"""Gemini API calls: URL, headers, the httpx call. I/O only.

    POST {base_url}/models/{model}:generateContent
    POST {base_url}/models/{model}:streamGenerateContent?alt=sse

The key goes in the x-goog-api-key header, never in the `?key=` query
parameter Google also accepts: URLs end up in logs, proxies and exception
messages. Conversion is translate's job; this module only moves bytes, bounds
them (response size, the caller's deadline) and turns transport failures into
ProviderErrors. No message it raises carries the operator's key or base URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from gateway_core.config import ProviderSettings
from gateway_core.errors import Reason
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import ProviderError, UpstreamCall
from gateway_core.providers.gemini import translate
from gateway_core.providers.http import (
    CORRELATION_ID,
    MAX_ERROR_BODY_BYTES,
    MAX_RESPONSE_BYTES,
    Deadline,
    call_timeout,
    next_event,
    read_body,
    trace_headers,
    transport_error,
    user_agent,
)
from gateway_core.providers.sse import SseEvent, iter_sse

# "gemini-2.5-flash", "models/gemini-2.5-flash" or "tunedModels/my-model": one
# path segment each, so an odd model id can never reach another endpoint.
_MODEL = re.compile(r"(?:(models|tunedModels)/)?([A-Za-z0-9][A-Za-z0-9._-]{0,127})")
class GeminiProvider:
    """A configured Gemini API upstream. Safe to share; the HTTP client is injected."""

    def __init__(self, settings: ProviderSettings, http: httpx.AsyncClient) -> None:
        self.name = settings.name
        self._settings = settings
        self._http = http
        self._base_url = settings.base_url.rstrip("/")
        self._user_agent = user_agent()

    async def complete(self, call: UpstreamCall) -> chat_pb2.CreateChatCompletionResponse:
        """POSTs generateContent and translates the whole answer."""
        body = translate.to_request(call)
        deadline = Deadline.after(call.timeout_seconds)
        async with contextlib.AsyncExitStack() as stack:
            response = await self._send(stack, call, body, deadline, stream=False)
            try:
                async with asyncio.timeout_at(deadline.loop_time()):
                    raw = await read_body(response, MAX_RESPONSE_BYTES, truncate=False)
            except (httpx.HTTPError, TimeoutError) as exc:
                raise transport_error(exc, responded=True) from None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise translate.malformed("response body is not JSON") from None
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
            response = await self._send(stack, call, body, deadline, stream=True)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                await _refuse_non_stream(response, deadline)
            events = await stack.enter_async_context(contextlib.aclosing(iter_sse(response)))
            while (event := await next_event(events, deadline)) is not None:
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
        self, stack: contextlib.AsyncExitStack, call: UpstreamCall, body: dict[str, Any], deadline: Deadline,
        *, stream: bool,
    ) -> httpx.Response:
        """Sends the request and returns the response with headers read (closed by stack)."""
        request = self._http.build_request(
            "POST", self._url(call, stream=stream), content=orjson.dumps(body),
            headers=self._headers(call, stream=stream), timeout=call_timeout(self._settings, deadline),
        )
        try:
            async with asyncio.timeout_at(deadline.loop_time()):
                response = await self._http.send(request, stream=True)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise transport_error(exc, responded=False) from None
        stack.push_async_callback(response.aclose)
        if response.is_success:
            return response
        try:
            async with asyncio.timeout_at(deadline.loop_time()):
                raw = await read_body(response, MAX_ERROR_BODY_BYTES, truncate=True)
        except (httpx.HTTPError, TimeoutError):
            raw = b""  # the status alone decides the mapping
        error = translate.map_error(response.status_code, raw, response.headers.get("retry-after"))
        if self._settings.api_key:  # belt and braces: bodies may echo the key in forms scrub() misses
            error.upstream_body = error.upstream_body.replace(self._settings.api_key, "[redacted]")
        raise error

    def _headers(self, call: UpstreamCall, *, stream: bool) -> dict[str, str]:
        """Request headers, built from scratch: of the client's, only the forwarded trace context."""
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            "user-agent": self._user_agent,
        }
        if stream:
            # A compressed event stream can sit in a decoder's buffer; tokens should not.
            headers["accept-encoding"] = "identity"
        if self._settings.api_key:
            headers["x-goog-api-key"] = self._settings.api_key
        if CORRELATION_ID.fullmatch(call.request_id):
            headers["x-request-id"] = call.request_id
        for name, value in trace_headers(call.forward_headers).items():
            headers.setdefault(name, value)
        return headers


async def _refuse_non_stream(response: httpx.Response, deadline: Deadline) -> None:
    """A 200 that is not an event stream (an error object, or a JSON array without alt=sse): raise."""
    try:
        async with asyncio.timeout_at(deadline.loop_time()):
            raw = await read_body(response, MAX_ERROR_BODY_BYTES, truncate=True)
    except (httpx.HTTPError, TimeoutError) as exc:
        raise transport_error(exc, responded=True) from None
    error = translate.error_object(raw)
    if error:
        raise translate.error_in_body(error)
    raise translate.malformed("a JSON body instead of an event stream")


def _event_json(event: SseEvent) -> Any:
    try:
        return orjson.loads(event.data)
    except orjson.JSONDecodeError:
        raise translate.malformed("stream event data is not JSON") from None


