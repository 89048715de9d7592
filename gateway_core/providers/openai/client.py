"""OpenAI-compatible upstream calls: URL, headers, the HTTP call. I/O only.

Conversion is translate's job; this module only moves bytes, bounds them
(response size, the caller's deadline) and turns transport failures into
ProviderErrors. No message it raises carries the operator's key or base URL.
Upstream headers are built from scratch: of the client's, only W3C trace
context passes, and only when well formed.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway_core.config import ProviderSettings
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import ProviderError, UpstreamCall
from gateway_core.providers.http import Deadline, call_timeout, read_json, request_headers, send_json, user_agent
from gateway_core.providers.http_client import UpstreamClient
from gateway_core.providers.http_response import ResponseHeaders, UpstreamResponse
from gateway_core.providers.openai import translate
from gateway_core.providers.openai.stream import OpenAIStream

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

    def stream(self, call: UpstreamCall) -> OpenAIStream:
        """The streamed answer: chunks as they arrive (a batch per network read with next_batch).

        The request is sent at the first read. Closing or cancelling the stream
        closes the upstream response, which is how the upstream learns to stop generating.
        """
        body = self._body(call, stream=True)
        deadline = Deadline.after(call.timeout_seconds)
        translator = translate.StreamTranslator(call, provider=self.name)
        return OpenAIStream(lambda: self._send(call, body, deadline, stream=True), translator, deadline)

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


def _map_error(status: int, raw: bytes, headers: ResponseHeaders) -> ProviderError:
    return translate.map_error(status, raw, headers.get("retry-after"), retry_after_ms=headers.get("retry-after-ms"))
