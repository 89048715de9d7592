"""One streamed chat completion from an OpenAI-compatible upstream, read one network read at a time.

The bytes of one read are SSE-decoded, parsed and translated in one step, and
their chunks handed out together (ChunkBatches; the read's text deltas of one
choice merged into one chunk by the translator), instead of an async generator
step per event through an event iterator and a deadline wrapper. Waits are
bounded by the connection itself: its read timeout and the caller's deadline
(one timer per connection, see http_connection); the deadline is also checked
once per batch, so chunks that are already here but late are not handed out.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway_core.errors import Reason
from gateway_core.pb.gateway.v1 import chat_pb2
from gateway_core.providers.base import ProviderError
from gateway_core.providers.chunk_batches import BatchedChunks
from gateway_core.providers.http import MAX_ERROR_BODY_BYTES, Deadline, drain, read_within, transport_error
from gateway_core.providers.http_errors import UpstreamTransportError
from gateway_core.providers.http_response import UpstreamResponse
from gateway_core.providers.openai import translate
from gateway_core.providers.openai.response import malformed
from gateway_core.providers.openai.text_shape import TextShape
from gateway_core.providers.sse import SseDecoder, SseEvent

Chunk = chat_pb2.StreamChatCompletionResponse
# How long to wait for the end of the body after [DONE] before giving up on reusing the connection.
DRAIN_SECONDS = 0.5
# How many text deltas of one stream may be studied for a TextShape (one is enough unless the head changes).
SHAPE_TRIES = 4


class OpenAIStream(BatchedChunks):
    """The chunks of one upstream stream: `async for`, or next_batch() for all that one read completed.

    Nothing is sent before the first read. Closing it (aclose, or a failure or
    cancellation inside a read) closes the upstream response, which is how the
    upstream learns to stop generating; reading to the end hands the connection
    back to the pool. One per request; read by one task at a time.
    """

    __slots__ = ("_open", "_translator", "_deadline", "_response", "_decoder", "_failure", "_ended", "_shape",
                 "_shape_tries")

    def __init__(self, open_response: Callable[[], Awaitable[UpstreamResponse]],
                 translator: translate.StreamTranslator, deadline: Deadline) -> None:
        super().__init__()
        self._open = open_response
        self._translator = translator
        self._deadline = deadline
        self._response: UpstreamResponse | None = None
        self._decoder = SseDecoder()
        # A failure met after some chunks of a read: raised by the next read, once those are out.
        self._failure: ProviderError | None = None
        self._ended = False
        self._shape: TextShape | None = None  # the wire form of this stream's text deltas, once learned
        self._shape_tries = SHAPE_TRIES

    @property
    def ended(self) -> bool:
        """The stream has ended without a failure still to raise: next_batch() returns None at once."""
        return self._ended and self._failure is None

    async def next_batch(self) -> list[Chunk] | None:
        if self._ended:
            failure, self._failure = self._failure, None
            if failure is not None:
                raise failure
            return None
        response = self._response
        if response is None:
            response = await self._start()
        at = self._deadline.at
        if at is not None and time.monotonic() >= at:  # late chunks are not handed out, even if they are here
            self._close()
            raise transport_error(TimeoutError(), responded=True)
        out: list[Chunk] = []
        try:
            while not out:
                try:
                    data = await response.next_chunk()
                except UpstreamTransportError as exc:
                    raise transport_error(exc, responded=True) from None
                if data is None:  # the body ended without [DONE]: fine only if the upstream said it was done
                    if not self._translator.finished:
                        raise ProviderError(Reason.UPSTREAM_ERROR, "upstream stream ended early")
                    out += self._translator.finish()
                    self._close()
                    break
                if self._take(self._decoder.feed(data), out):  # [DONE]
                    out += self._translator.finish()
                    await drain(response, self._deadline, DRAIN_SECONDS)
                    self._close()
                    break
        except ProviderError as failure:
            self._close()
            if not out:
                raise
            self._failure = failure  # after the chunks before it
        except BaseException:
            self._close()
            raise
        return out or None

    async def aclose(self) -> None:
        self._failure = None
        self._close()

    async def _start(self) -> UpstreamResponse:
        """Sends the request; the response's head is in (a non-2xx answer was raised as its error)."""
        try:
            response = self._response = await self._open()
        except BaseException:
            self._ended = True
            raise
        try:
            if response.content_type.startswith(b"application/json"):
                await _refuse_json_instead_of_stream(response, self._deadline)
        except BaseException:
            self._close()
            raise
        return response

    def _take(self, events: list[SseEvent], out: list[Chunk]) -> bool:
        """Translates the events of one read into out, in order; True at [DONE] (what follows it is not read).

        Text deltas of one choice that arrived in this read leave as one chunk (see
        StreamTranslator); the read's text is handed out before a failure met in it is raised.
        An event of the stream's learned TextShape skips the parser (same result, see text_shape).
        """
        translator = self._translator
        feed, feed_text = translator.feed_into, translator.feed_text
        shape = self._shape
        try:
            for event in events:
                data = event.data
                if shape is not None and event.event == "message":
                    text = shape.match(data)
                    if text is not None:
                        feed_text(shape.data, shape.index, text, out)
                        continue
                if data[:1] != "{" and data.strip() == "[DONE]":  # a JSON chunk is never the end marker
                    return True
                try:
                    parsed = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise malformed("stream event data is not JSON") from None
                if event.event == "error":
                    raise translate.error_in_body(parsed.get("error", parsed) if isinstance(parsed, dict) else parsed)
                text = feed(parsed, out)
                if text is not None and self._shape_tries and event.event == "message":
                    shape = self._learn(data, parsed, text) or shape
        finally:
            self._shape = shape
            translator.end_read(out)
        return False

    def _learn(self, raw: str, parsed: dict[str, Any], text: str) -> TextShape | None:
        """The shape of a text-only delta the translator just took (a few tries per stream: a vendor whose
        events differ beyond their content, such as a per-event nonce, never has one)."""
        self._shape_tries -= 1
        return TextShape.learn(raw, parsed, parsed["choices"][0].get("index", 0), text)

    def _close(self) -> None:
        self._ended = True
        response = self._response
        if response is not None:
            response.aclose_now()


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
