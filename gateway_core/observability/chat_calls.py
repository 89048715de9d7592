"""The servicer's side of observing a chat call: the record, the core span, the end of the call.

`observe_call` wraps one gRPC chat call. Code inside it reports what it learns
(admitted, failed) through the CallObserver it yields; when the block exits the
call is over — however it ended — and the record writes its line once settled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry import trace

from gateway_core import metrics
from gateway_core.chat.meter import Admission
from gateway_core.errors import GatewayError
from gateway_core.observability import tracing
from gateway_core.observability.request_record import CANCELLED, UNKNOWN_MODEL, RequestRecord, current

INTERNAL = "INTERNAL"
_STREAMS_IN_FLIGHT = metrics.hot_gauge(metrics.STREAMS_IN_FLIGHT)


class CallObserver:
    """Reports of one chat call into its RequestRecord and its span."""

    def __init__(self, record: RequestRecord, span: trace.Span | None) -> None:
        self.record = record
        self._span = span
        self.admission: Admission | None = None

    def admitted(self, admission: Admission) -> None:
        self.admission = admission
        hold = admission.hold
        self.record.admit(
            request_id=hold.request_id, hold=hold, model=admission.model.name,
            provider=admission.provider.name, upstream_model=admission.call.upstream_model,
        )
        if self._span is not None:
            self._span.set_attribute("tollgate.request_id", hold.request_id)
            self._span.set_attribute("tollgate.provider", admission.provider.name)

    def failed(self, error: GatewayError) -> None:
        """A GatewayError ended the call: before admission it is a rejection (nothing went upstream)."""
        if self.record.admitted:
            self.record.fail(error.reason.value)
        else:
            self.record.reject(error.reason.value)
        self._error(error.reason.value)

    def crashed(self) -> None:
        self.record.fail(INTERNAL)
        self._error(INTERNAL)

    def _error(self, error_type: str) -> None:
        if self._span is not None:
            self._span.set_attribute(tracing.ERROR_TYPE, error_type)
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, error_type))

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        if self._span is not None:
            self._span.set_attribute(tracing.INPUT_TOKENS, prompt_tokens)
            self._span.set_attribute(tracing.OUTPUT_TOKENS, completion_tokens)


def observe_call(
    tracer: trace.Tracer | None,
    *,
    mode: str,
    requested_model: str,
    known_models: frozenset[str],
    metadata: Sequence[tuple[str, Any]],
) -> AbstractContextManager[CallObserver]:
    """Opens the record (and with tracing the core's server span) for one chat call."""
    model = requested_model if requested_model in known_models else UNKNOWN_MODEL
    if tracer is None:
        return _ObservedCall(mode, model, metadata)
    return _observe_traced(tracer, mode, model, metadata)


class _ObservedCall:
    """observe_call without tracing: the same steps as _observe_traced, as a plain context manager
    (a generator-based one, with contextlib.suppress inside, cost a few µs per request)."""

    __slots__ = ("_mode", "_model", "_metadata", "_record", "_token")

    def __init__(self, mode: str, model: str, metadata: Sequence[tuple[str, Any]]) -> None:
        self._mode, self._model, self._metadata = mode, model, metadata

    def __enter__(self) -> CallObserver:
        record = self._record = RequestRecord(mode=self._mode, model=self._model, request_id=_request_id(self._metadata))
        self._token = current.set(record)
        if self._mode == "stream":
            _STREAMS_IN_FLIGHT.inc()
        return CallObserver(record, None)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        record = self._record
        try:
            if kind is not None and issubclass(kind, (asyncio.CancelledError, GeneratorExit)):
                record.fail(CANCELLED)
        finally:
            if self._mode == "stream":
                _STREAMS_IN_FLIGHT.dec()
            try:
                current.reset(self._token)
            except ValueError:  # reset from another context (a closed generator): harmless
                pass
            record.end_call()


@contextlib.contextmanager
def _observe_traced(
    tracer: trace.Tracer, mode: str, model: str, metadata: Sequence[tuple[str, Any]]
) -> Iterator[CallObserver]:
    record = RequestRecord(mode=mode, model=model, request_id=_request_id(metadata))
    token = current.set(record)
    in_flight = mode == "stream"
    if in_flight:
        _STREAMS_IN_FLIGHT.inc()
    try:
        with _server_span(tracer, model, metadata) as span:
            try:
                yield CallObserver(record, span)
            except (asyncio.CancelledError, GeneratorExit):
                record.fail(CANCELLED)
                raise
    finally:
        if in_flight:
            _STREAMS_IN_FLIGHT.dec()
        with contextlib.suppress(ValueError):  # reset from another context (a closed generator): harmless
            current.reset(token)
        record.end_call()


@contextlib.contextmanager
def _server_span(
    tracer: trace.Tracer | None, model: str, metadata: Sequence[tuple[str, Any]]
) -> Iterator[trace.Span | None]:
    if tracer is None:
        yield None
        return
    attributes = {tracing.OPERATION_NAME: tracing.CHAT, tracing.REQUEST_MODEL: model}
    with tracer.start_as_current_span(
        f"{tracing.CHAT} {model}", context=tracing.extract(metadata), kind=trace.SpanKind.SERVER,
        attributes=attributes, record_exception=False, set_status_on_exception=False,
    ) as span:
        yield span


def _request_id(metadata: Sequence[tuple[str, Any]]) -> str:
    """The facade's x-request-id, so even a refused request's line can be found (replaced on admission)."""
    for name, value in metadata:
        if name == "x-request-id" and isinstance(value, str):
            return value[:128]
    return ""
