"""One chat request as operators see it: the metrics it adds to and its one access-log line.

The servicer opens a RequestRecord per call and makes it current (a context
variable, so the ledger and the upstream wrapper, which run in tasks copied
from the call's context, find the same record). The line is written once both
have happened: the call ended (answered, failed or the client left) and, for
an admitted request, its hold was settled — which for a client that left
happens later, in the background, after the upstream was drained.
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass, field
from typing import TypeVar

from gateway_core import metrics
from gateway_core.metering.outcome import Hold, Settlement, UsageOutcome, UsageStatus
from gateway_core.observability import json_lines
from gateway_core.observability.after_answer import after_answer

access_log = logging.getLogger("tollgate.access")

OK = "ok"
CANCELLED = "cancelled"
# Model label of requests for a model that is not configured: bounded, unlike what clients send.
UNKNOWN_MODEL = "unknown"

# Children per label tuple, in each metric's label order (metrics.py).
_REQUESTS = metrics.HotLabels(metrics.REQUESTS)  # model, provider, route, status
_REQUEST_DURATION = metrics.HotLabels(metrics.REQUEST_DURATION)  # model, provider, mode
_GATEWAY_OVERHEAD = metrics.HotLabels(metrics.GATEWAY_OVERHEAD)  # mode
_TIME_TO_FIRST_TOKEN = metrics.HotLabels(metrics.TIME_TO_FIRST_TOKEN)  # model, provider
_TOKENS = metrics.HotLabels(metrics.TOKENS)  # model, provider, direction
_COST_MICROS = metrics.HotLabels(metrics.COST_MICROS)  # model, provider
_REJECTIONS = metrics.HotLabels(metrics.REJECTIONS)  # reason

current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("tollgate_request", default=None)


@dataclass
class RequestRecord:
    """What is known about one chat call so far. One per call; mutated only on its event loop."""

    mode: str  # "unary" | "stream"
    model: str = UNKNOWN_MODEL
    started: float = field(default_factory=time.monotonic)
    request_id: str = ""
    account_id: str = ""
    api_key_id: str = ""
    provider: str = ""
    route: str = ""
    status: str = OK
    admitted: bool = False
    # Seconds spent awaiting the upstream (connect, headers, each chunk); the rest is the gateway's.
    upstream_wait_seconds: float = 0.0
    ended_at: float | None = None
    outcome: UsageOutcome | None = None
    charged_micros: int = 0
    settled: bool = False
    written: bool = False

    def admit(self, *, request_id: str, hold: Hold, model: str, provider: str, upstream_model: str) -> None:
        """The request passed auth, limits and routing and its money is held: a settlement will follow."""
        self.request_id = request_id
        self.account_id = hold.account_id
        self.api_key_id = hold.api_key_id
        self.model = model
        self.provider = provider
        self.route = f"{provider}/{upstream_model}"
        self.admitted = True

    def reject(self, reason: str) -> None:
        """Refused before any upstream call (bad key, no balance, rate limit, bad request...)."""
        self.status = reason
        _REJECTIONS.labels(reason).inc()

    def fail(self, status: str) -> None:
        self.status = status

    def end_call(self) -> None:
        """The gRPC call is over; writes the line (once the answer is out) unless a settlement is still to come."""
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        if self.admitted and not self.settled:
            return
        after_answer(self._write)

    def settle(self, outcome: UsageOutcome, settlement: Settlement) -> None:
        """The ledger settled this request's hold (maybe after the client left)."""
        self.outcome = outcome
        self.charged_micros = settlement.charged_micros
        self.settled = True
        if outcome.status == UsageStatus.CANCELLED:
            self.status = CANCELLED
        if self.ended_at is not None:
            self._write()

    def _write(self) -> None:
        if self.written:
            return
        self.written = True
        ended = self.ended_at if self.ended_at is not None else time.monotonic()
        duration = _not_below_zero(ended - self.started, 0.0)
        _REQUESTS.labels(self.model, self.provider, self.route, self.status).inc()
        ttft_ms = self.outcome.time_to_first_token_ms if self.outcome else None
        if self.admitted:
            _REQUEST_DURATION.labels(self.model, self.provider, self.mode).observe(duration)
            _GATEWAY_OVERHEAD.labels(self.mode).observe(_not_below_zero(duration - self.upstream_wait_seconds, 0.0))
            if self.mode == "stream" and ttft_ms is not None:
                _TIME_TO_FIRST_TOKEN.labels(self.model, self.provider).observe(ttft_ms / 1000)
        fields = self._fields(duration, ttft_ms)
        if not json_lines.info_line(access_log, "chat request", fields):
            access_log.info("chat request", extra=fields)

    def _fields(self, duration: float, ttft_ms: int | None) -> dict[str, object]:
        outcome = self.outcome
        return {
            "request_id": self.request_id,
            "account_id": self.account_id,
            "key_id": self.api_key_id,
            "model": self.model,
            "provider": self.provider,
            "route": self.route,
            "mode": self.mode,
            "status": self.status,
            "prompt_tokens": _not_below_zero(outcome.prompt_tokens, 0) if outcome else 0,
            "completion_tokens": _not_below_zero(outcome.completion_tokens, 0) if outcome else 0,
            "cost_micros": self.charged_micros,
            "latency_ms": int(duration * 1000),
            "ttft_ms": ttft_ms,
            "upstream_ms": int(self.upstream_wait_seconds * 1000),
        }


def observe_settlement(hold: Hold, outcome: UsageOutcome, settlement: Settlement) -> None:
    """Called by the ledger after each settle: counts billed tokens and money once, completes the record.

    Never raises: the settlement is already committed, and watching it must not look like a failed write.
    """
    try:
        if not settlement.replayed:
            after_answer(_count_settlement, outcome, settlement.charged_micros)
        record = current.get()
        if record is not None and record.admitted and record.request_id == hold.request_id:
            record.settle(outcome, settlement)
    except Exception:  # noqa: BLE001 - observation only; logged, never propagated into the money path
        logging.getLogger("tollgate.metrics").exception("recording settlement of %s failed", hold.request_id)


def _count_settlement(outcome: UsageOutcome, charged_micros: int) -> None:
    model, provider = outcome.model, outcome.provider
    # The ledger stores out-of-range counts as zero; so do the counters (which cannot go down).
    _TOKENS.labels(model, provider, "prompt").inc(_not_below_zero(outcome.prompt_tokens, 0))
    _TOKENS.labels(model, provider, "completion").inc(_not_below_zero(outcome.completion_tokens, 0))
    _COST_MICROS.labels(model, provider).inc(_not_below_zero(charged_micros, 0))


_Number = TypeVar("_Number", int, float)


def _not_below_zero(value: _Number, zero: _Number) -> _Number:
    """max(value, zero) (zero being 0 or 0.0), without the builtin's cost (~8x a comparison)."""
    return zero if zero > value else value


def current_record() -> RequestRecord | None:
    """The record of the chat call this code runs for, if any."""
    return current.get()


def add_upstream_wait(seconds: float) -> None:
    """Adds time spent awaiting the upstream to the current request, if there is one."""
    record = current.get()
    if record is not None:
        record.upstream_wait_seconds += seconds
