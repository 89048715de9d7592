"""Measures one admitted request as it runs, and turns what it saw into a UsageOutcome."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway_core.config import ModelSettings, Route
from gateway_core.metering.outcome import Hold, UsageOutcome, UsageStatus
from gateway_core.metering.usage import CheckedUsage, charge_micros, check_usage
from gateway_core.pb.gateway.v1 import chat_pb2, types_pb2
from gateway_core.providers.base import Provider, UpstreamCall
from gateway_core.tokens import estimate_text_tokens


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs a setattr call per field (twice per request)
class Admission:
    """A request that passed auth, validation and routing, with its money held. Never changed."""

    model: ModelSettings
    provider: Provider
    call: UpstreamCall
    hold: Hold
    prompt_estimate: int
    # Output tokens the hold covers: n x the per-choice limit sent upstream.
    max_completion_tokens: int
    started: float
    # The routes to try, in order (routing's choice at admission); provider and call are the current attempt's.
    routes: tuple[Route, ...] = ()
    # x-ratelimit-* values to send the client (gRPC initial metadata), when limits apply.
    limit_headers: tuple[tuple[str, str], ...] = ()


class RequestMeter:
    """Collects usage, output text and timing of one request. One per request; not thread-safe."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.usage: types_pb2.Usage | None = None
        self.first_token_at: float | None = None
        self.template: chat_pb2.StreamChatCompletionResponse | None = None
        self._output: list[str] = []
        self._response: chat_pb2.CreateChatCompletionResponse | None = None

    def observe(self, chunk: chat_pb2.StreamChatCompletionResponse) -> None:
        """Feeds one streamed chunk (called by the StreamRun, also after the client left)."""
        self.observe_batch((chunk,))

    def observe_batch(self, chunks: Sequence[chat_pb2.StreamChatCompletionResponse]) -> None:
        """Feeds the streamed chunks of one upstream read, in order."""
        output = self._output
        for chunk in chunks:
            if self.template is None:
                self.template = chunk
            if chunk.HasField("usage"):
                self.usage = chunk.usage
            choices = chunk.choices
            for i in range(len(choices)):  # indexing is cheaper than iterating a upb repeated field
                delta = choices[i].delta
                content = delta.content  # "" when unset
                if content:
                    output.append(content)
                elif delta.HasField("refusal"):
                    output.append(delta.refusal)
                if delta.tool_calls:
                    output.extend(call.function.name + call.function.arguments for call in delta.tool_calls)
        if self.first_token_at is None and output:
            self.first_token_at = time.monotonic()

    def observe_response(self, response: chat_pb2.CreateChatCompletionResponse) -> None:
        """Feeds a whole (unary) response. Its text is gathered only if an estimate needs it
        (the upstream reported no usage): an answer's text is not copied to be counted unread."""
        self.first_token_at = time.monotonic()
        if response.HasField("usage"):
            self.usage = response.usage
        self._response = response

    def _response_output(self) -> list[str]:
        """The observed unary response's text, one entry per choice plus its tool calls."""
        output: list[str] = []
        if self._response is not None:
            for choice in self._response.choices:
                message = choice.message
                output.append(message.content + message.refusal)
                if message.tool_calls:
                    output.extend(c.function.name + c.function.arguments for c in message.tool_calls)
        return output

    @property
    def produced_output(self) -> bool:
        # A response with a choice counts as output even if its text is empty (as its entry would).
        return (
            bool(self._output) or (self._response is not None and len(self._response.choices) > 0)
            or (self.usage is not None and self.usage.completion_tokens > 0)
        )

    def checked_usage(self) -> CheckedUsage:
        """The upstream's usage checked into range, or an estimate from what was seen."""
        limit = self.admission.max_completion_tokens
        if self.usage is not None and not self.usage.estimated:
            return check_usage(self.usage, max_completion_tokens=limit)
        completion = estimate_text_tokens("".join(self._output + self._response_output()))
        return CheckedUsage(self.admission.prompt_estimate, min(completion, limit), 0, 0, True, completion > limit)

    def outcome(self, status: UsageStatus) -> UsageOutcome:
        """What to bill. A request that failed before any output is not charged."""
        admission = self.admission
        if status == UsageStatus.UPSTREAM_ERROR and not self.produced_output:
            usage = CheckedUsage(0, 0, 0, 0, self.usage is None, False)
        else:
            usage = self.checked_usage()
        cost, capped = charge_micros(admission.model, usage, held=admission.hold.amount_micros)
        now = time.monotonic()
        return UsageOutcome(
            model=admission.call.client_model,
            provider=admission.provider.name,
            upstream_model=admission.call.upstream_model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_micros=cost,
            status=status,
            latency_ms=int((now - admission.started) * 1000),
            time_to_first_token_ms=None if self.first_token_at is None else int((self.first_token_at - admission.started) * 1000),
            estimated=usage.estimated,
            clamped=usage.clamped or capped,
        )


def billed_usage(outcome: UsageOutcome, charged_micros: int) -> types_pb2.Usage:
    """The usage message clients see: exactly what was billed."""
    usage = types_pb2.Usage()
    set_billed_usage(usage, outcome, charged_micros)
    return usage


def set_billed_usage(usage: types_pb2.Usage, outcome: UsageOutcome, charged_micros: int) -> None:
    """Sets every field of usage (a response's own, in place: no message built and copied in) to
    what billed_usage gives."""
    usage.prompt_tokens = outcome.prompt_tokens
    usage.completion_tokens = outcome.completion_tokens
    usage.total_tokens = outcome.prompt_tokens + outcome.completion_tokens
    usage.cached_tokens = outcome.cached_tokens
    usage.reasoning_tokens = outcome.reasoning_tokens
    usage.cost_micros = charged_micros
    usage.estimated = outcome.estimated


def cancelled_before_upstream(hold_args: dict[str, Any]) -> UsageOutcome:
    """What a hold whose caller left before any upstream call is settled with: nothing."""
    return UsageOutcome(
        model=hold_args["model"], provider=hold_args["provider"], upstream_model=hold_args["upstream_model"],
        prompt_tokens=0, completion_tokens=0, cached_tokens=0, reasoning_tokens=0, cost_micros=0,
        status=UsageStatus.CANCELLED, latency_ms=0, time_to_first_token_ms=None, estimated=True,
    )
