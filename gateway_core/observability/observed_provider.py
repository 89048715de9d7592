"""A Provider wrapper that times the upstream and, with tracing on, opens the upstream span.

Wrapping at the Provider boundary keeps the chat pipeline free of telemetry: the
pipeline calls `complete`/`stream` as before, and whatever sits around those
calls (routing, retries, fallbacks) gets one span and one timing per upstream call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator, Mapping

from opentelemetry import trace

from gateway_core.errors import GatewayError
from gateway_core.observability import tracing
from gateway_core.observability.request_record import RequestRecord, add_upstream_wait, current_record
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import Provider, UpstreamCall
from gateway_core.providers.chunk_batches import BatchedChunks, ChunkBatches, batches_of

_FINISH = types_pb2.FinishReason


class ObservedProvider:
    """Delegates to a provider; adds upstream wait time to the current request and a client span."""

    def __init__(self, inner: Provider, tracer: trace.Tracer | None, *, system: str) -> None:
        self.name = inner.name
        self._inner = inner
        self._tracer = tracer
        self._system = system

    async def complete(self, call: UpstreamCall) -> chat_pb2.CreateChatCompletionResponse:
        if self._tracer is None:  # no span to open: just the timing (no generator context manager per call)
            started = time.monotonic()
            try:
                return await self._inner.complete(call)
            finally:
                add_upstream_wait(time.monotonic() - started)
        with self._span(call) as span:
            call = _with_span_context(call, span)
            started = time.monotonic()
            try:
                response = await self._inner.complete(call)
            except BaseException as exc:
                _record_error(span, exc)
                raise
            finally:
                add_upstream_wait(time.monotonic() - started)
            if span is not None:
                _record_response(span, response.model, response.id, response.usage if response.HasField("usage") else None,
                                 [c.finish_reason for c in response.choices])
            return response

    def stream(self, call: UpstreamCall) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        """The inner stream, its upstream waits added to the current request (and, with tracing, in a span)."""
        if self._tracer is None:  # just the timing: one wrapper step per batch, not a generator step per chunk
            return TimedStream(batches_of(self._inner.stream(call)), current_record())
        return self._traced_stream(call)

    async def _traced_stream(self, call: UpstreamCall) -> AsyncIterator[chat_pb2.StreamChatCompletionResponse]:
        with self._span(call) as span:
            call = _with_span_context(call, span)
            chunks = self._inner.stream(call)
            # Looked up once: this generator runs in one task, whose context holds one record.
            record = current_record()
            model, response_id, usage, finishes = "", "", None, []
            monotonic = time.monotonic
            # Time spent waiting for the upstream: from each resumption to the next chunk (not the
            # time the consumer holds a chunk), summed here and added to the record once at the end.
            waited, waiting, resumed = 0.0, True, monotonic()
            try:
                async for chunk in chunks:
                    waited += monotonic() - resumed
                    waiting = False
                    if span is not None:  # what the span reports at the end; nobody else needs it
                        model, response_id = chunk.model or model, chunk.id or response_id
                        usage = chunk.usage if chunk.HasField("usage") else usage
                        finishes.extend(c.finish_reason for c in chunk.choices if c.finish_reason)
                    yield chunk
                    waiting, resumed = True, monotonic()
            except BaseException as exc:
                _record_error(span, exc)
                raise
            finally:
                if waiting:  # the last wait: for the end, a failure, or a cancellation
                    waited += monotonic() - resumed
                if record is not None:
                    record.upstream_wait_seconds += waited
                await _aclose(chunks)
            if span is not None:
                _record_response(span, model, response_id, usage, finishes)

    async def aclose(self) -> None:
        await self._inner.aclose()

    @contextlib.contextmanager
    def _span(self, call: UpstreamCall) -> Iterator[trace.Span | None]:
        if self._tracer is None:
            yield None
            return
        attributes = {
            tracing.OPERATION_NAME: tracing.CHAT,
            tracing.PROVIDER_NAME: self._system,
            tracing.SYSTEM: self._system,
            tracing.REQUEST_MODEL: call.upstream_model,
            "tollgate.provider": self.name,
            "tollgate.request_id": call.request_id,
        }
        with self._tracer.start_as_current_span(
            f"{tracing.CHAT} {call.upstream_model}", kind=trace.SpanKind.CLIENT, attributes=attributes,
            record_exception=False,
        ) as span:
            yield span


class TimedStream(BatchedChunks):
    """A stream whose reads are timed: the time spent waiting inside next_batch (not the time its
    consumer holds a batch) is added to the request's record once, when the stream ends or is closed.

    The record is looked up once, when the stream is made: one stream is read in one task, whose
    context holds one record."""

    __slots__ = ("_inner", "_record", "_waited", "_counted")

    def __init__(self, inner: ChunkBatches, record: RequestRecord | None) -> None:
        super().__init__()
        self._inner = inner
        self._record = record
        self._waited = 0.0
        self._counted = False

    @property
    def ended(self) -> bool:
        """The inner stream's `ended`, where it has one (chunk_batches.ChunkBatches)."""
        return getattr(self._inner, "ended", False)  # type: ignore[no-any-return]

    async def next_batch(self) -> list[chat_pb2.StreamChatCompletionResponse] | None:
        started = time.monotonic()
        try:
            batch = await self._inner.next_batch()
        except BaseException:
            self._waited += time.monotonic() - started
            self._count()  # reads _waited: the wait that ended in the error counts
            raise
        self._waited += time.monotonic() - started
        if batch is None:
            self._count()
        return batch

    async def aclose(self) -> None:
        self._count()
        await self._inner.aclose()

    def _count(self) -> None:
        if not self._counted:
            self._counted = True
            if self._record is not None:
                self._record.upstream_wait_seconds += self._waited


def observe_providers(
    providers: Mapping[str, Provider], tracer: trace.Tracer | None, systems: Mapping[str, str]
) -> dict[str, Provider]:
    """Each provider wrapped; systems maps provider name to its gen_ai.provider.name (openai, anthropic...)."""
    return {name: ObservedProvider(p, tracer, system=systems.get(name, name)) for name, p in providers.items()}


def _with_span_context(call: UpstreamCall, span: trace.Span | None) -> UpstreamCall:
    """The call with traceparent/tracestate naming the upstream span as parent."""
    if span is None:
        return call
    return dataclasses.replace(call, forward_headers=tuple(tracing.with_current_context(call.forward_headers)))


def _record_error(span: trace.Span | None, exc: BaseException) -> None:
    if span is None or isinstance(exc, GeneratorExit):
        return
    error_type = exc.reason.value if isinstance(exc, GatewayError) else type(exc).__qualname__
    span.set_attribute(tracing.ERROR_TYPE, error_type)
    span.set_status(trace.Status(trace.StatusCode.ERROR, error_type))


def _record_response(
    span: trace.Span, model: str, response_id: str, usage: object, finishes: list[int]
) -> None:
    if model:
        span.set_attribute(tracing.RESPONSE_MODEL, model)
    if response_id:
        span.set_attribute(tracing.RESPONSE_ID, response_id)
    if usage is not None:
        span.set_attribute(tracing.INPUT_TOKENS, int(getattr(usage, "prompt_tokens", 0)))
        span.set_attribute(tracing.OUTPUT_TOKENS, int(getattr(usage, "completion_tokens", 0)))
    reasons = [_finish_name(f) for f in finishes if f]
    if reasons:
        span.set_attribute(tracing.FINISH_REASONS, reasons)


def _finish_name(value: int) -> str:
    name = _FINISH.Name(value) if value in _FINISH.values() else str(value)
    return name.removeprefix("FINISH_REASON_").lower()


async def _aclose(chunks: AsyncIterator[object]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
